"""Hugging Face transformers' DINOv2 backbones (Dinov2Model, Dinov2WithRegistersModel) as StagedModels: spec hf:REPO,
a hub id (facebook/dinov2-small) or a local folder written by save_pretrained.

A backbone has no classification head: its output is the CLS token after the final layer norm (its pooler output),
and each labelled set collected from it fits a linear probe."""

from __future__ import annotations

import torch
import torch.nn as nn
import transformers
from transformers import AutoConfig, AutoModel

from vitsae_tui.engine.models import Preprocess
from vitsae_tui.engine.models.base import StagedModel, transformer_points

VERSION = transformers.__version__
SUPPORTED = ("Dinov2Model", "Dinov2WithRegistersModel")
RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic"}  # PIL's numbering, as processors store it


def unknown(name: str) -> str:
    return ""  # a hub id is only known once the hub (or its cache) answers


def build(name: str, state: dict[str, torch.Tensor] | None) -> nn.Module:
    """`name`'s model from the hub (or its cache, or a local folder); with `state`, only its config is read there."""
    transformers.utils.logging.disable_progress_bar()  # its loading bars would interleave with our progress
    if state is None:
        return AutoModel.from_pretrained(name)
    model = AutoModel.from_config(AutoConfig.from_pretrained(name))
    model.load_state_dict(state)
    return model


def has_head(model: nn.Module) -> bool:
    return False


def supports(model: nn.Module) -> str:
    if type(model).__name__ not in SUPPORTED:
        return f"{type(model).__name__} is not one of {', '.join(SUPPORTED)}"
    return ""


class _Embed(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.embeddings(images)  # (B, 1 + registers + H*W, d), position embeddings interpolated


class _Layer(nn.Module):
    """One encoder layer on hidden states alone (transformers 4 returns a tuple, 5 the tensor)."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layer(x)
        return out[0] if isinstance(out, tuple) else out


class _Readout(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.layernorm(x)[:, 0]  # the pooler output: the CLS token after the final norm


def preprocess(name: str) -> Preprocess:
    """The repo's image processor (resize, crop, resample, mean, std); DINOv2's defaults when it ships none."""
    from transformers import AutoImageProcessor

    try:
        processor = AutoImageProcessor.from_pretrained(name, backend="pil")
    except (OSError, ValueError):
        return Preprocess(224, 256, "bicubic", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    return Preprocess(
        size=int(processor.crop_size["height"]),
        resize=int(processor.size["shortest_edge"]),
        interpolation=RESAMPLE.get(int(processor.resample), "bicubic"),
        mean=tuple(float(m) for m in processor.image_mean),
        std=tuple(float(s) for s in processor.image_std),
    )


def wrap(model: nn.Module, name: str) -> StagedModel:
    cfg = model.config
    prep = preprocess(name)
    side = prep.size // cfg.patch_size
    registers = int(getattr(cfg, "num_register_tokens", 0) or 0)
    layers = [_Layer(layer) for layer in model.encoder.layer]
    return StagedModel(
        _Embed(model),
        layers,
        _Readout(model),
        transformer_points(len(layers)),
        prep,
        patch_grid=(side, side),
        special=("cls",) + ("reg",) * registers,
    )


def class_names(model: nn.Module, name: str) -> tuple[str, ...]:
    return ()
