"""timm's vision transformers (ViT, DeiT, DINOv2 and register models as timm builds them) as StagedModels."""

from __future__ import annotations

import math

import timm
import torch
import torch.nn as nn

from vitsae_tui.engine.models import Preprocess
from vitsae_tui.engine.models.base import StagedModel, transformer_points

VERSION = timm.__version__


class _Embed(nn.Module):
    """Patches, special tokens and position embeddings: the input of the first block, as timm computes it."""

    def __init__(self, vit: nn.Module):
        super().__init__()
        self.vit = vit

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        vit = self.vit
        return vit.norm_pre(vit.patch_drop(vit._pos_embed(vit.patch_embed(images))))  # (B, S + H*W, d)


class _Readout(nn.Module):
    def __init__(self, vit: nn.Module):
        super().__init__()
        self.vit = vit

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.vit.forward_head(self.vit.norm(x))  # (B, n_classes)


def build(name: str, state: dict[str, torch.Tensor] | None) -> nn.Module:
    """timm's model `name`: with `state` loaded (its depth and class count read from it), else timm's pretrained
    weights through timm's own download and cache."""
    if state is None:
        return timm.create_model(name, pretrained=True)
    blocks = {int(key.split(".")[1]) for key in state if key.startswith("blocks.")}
    head = state.get("head.weight")
    kwargs = {"depth": max(blocks) + 1} if blocks else {}
    model = timm.create_model(name, pretrained=False, num_classes=0 if head is None else head.shape[0], **kwargs)
    model.load_state_dict(state)
    return model


def unknown(name: str) -> str:
    """Why timm cannot build `name` ("" when it can)."""
    return "" if timm.is_model(name) else f"timm has no model {name!r}; see timm.list_models('*vit*')"


def has_head(model: nn.Module) -> bool:
    """Whether it classifies (a headless backbone, num_classes 0, returns its pooled features)."""
    return getattr(model, "num_classes", 0) > 0


def supports(model: nn.Module) -> str:
    """Why this model cannot be read block by block ("" when it can)."""
    from timm.models.vision_transformer import VisionTransformer

    if not isinstance(model, VisionTransformer):
        return f"{type(model).__name__} is not one of timm's VisionTransformer models (ViT, DeiT, DINOv2, …)"
    if getattr(model, "dynamic_img_size", False):
        return "models built with dynamic_img_size are not supported"
    return ""


def special_tokens(vit: nn.Module) -> tuple[str, ...]:
    """The kinds of the tokens before the patches, in timm's order: class, distillation, registers."""
    kinds = ("cls",) * (getattr(vit, "cls_token", None) is not None)
    kinds += ("dist",) * (getattr(vit, "dist_token", None) is not None)
    kinds += ("reg",) * int(getattr(vit, "num_reg_tokens", 0) or 0)
    assert len(kinds) == vit.num_prefix_tokens, (kinds, vit.num_prefix_tokens)
    return kinds


def preprocess(model: nn.Module) -> Preprocess:
    """timm's own evaluation transform for this model (resolve_data_config), in our terms."""
    cfg = timm.data.resolve_data_config({}, model=model)
    size = int(cfg["input_size"][-1])
    return Preprocess(
        size=size,
        resize=math.floor(size / float(cfg.get("crop_pct", 0.875))),
        interpolation=str(cfg["interpolation"]),
        mean=tuple(float(m) for m in cfg["mean"]),
        std=tuple(float(s) for s in cfg["std"]),
    )


def wrap(vit: nn.Module, name: str) -> StagedModel:
    grid = tuple(int(g) for g in vit.patch_embed.grid_size)
    return StagedModel(
        _Embed(vit),
        list(vit.blocks),
        _Readout(vit),
        transformer_points(len(vit.blocks)),
        preprocess(vit),
        patch_grid=grid,
        special=special_tokens(vit),
    )


def class_names(model: nn.Module, name: str) -> tuple[str, ...]:
    """ImageNet-1k's names for a 1000-class head (timm ships them), else none."""
    if getattr(model, "num_classes", 0) != 1000:
        return ()
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    return tuple(info.index_to_description(i).split(",")[0] for i in range(1000))
