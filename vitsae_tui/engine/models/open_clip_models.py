"""open_clip's image towers (CLIP ViTs) as StagedModels: spec open_clip:ARCH/TAG (ViT-B-32/laion2b_s34b_b79k …).

A tower has no classification head: its output is the image embedding, and each labelled set collected from it
fits a linear probe."""

from __future__ import annotations

import contextlib
import logging

import open_clip
import torch
import torch.nn as nn
from open_clip.transformer import VisionTransformer

from vitsae_tui.engine.models import Preprocess
from vitsae_tui.engine.models.base import StagedModel, transformer_points

VERSION = open_clip.__version__


def _arch_tag(name: str) -> tuple[str, str]:
    arch, _, tag = name.partition("/")
    return arch, tag


def unknown(name: str) -> str:
    arch, _ = _arch_tag(name)
    return "" if arch in open_clip.list_models() else f"open_clip has no model {arch!r}; see open_clip.list_models()"


def build(name: str, state: dict[str, torch.Tensor] | None) -> nn.Module:
    """The image tower of `ARCH/TAG`: from `state` (a whole CLIP checkpoint or the tower's own), else open_clip's
    download of TAG's weights."""
    arch, tag = _arch_tag(name)
    if state is None:
        if not tag:
            raise ValueError(f"open_clip:{arch} names no pretrained tag; use open_clip:{arch}/TAG or --weights FILE")
        return open_clip.create_model(arch, pretrained=tag).visual
    with _quiet():  # open_clip warns that no pretrained weights were loaded: they are loaded next
        model = open_clip.create_model(arch, pretrained=None)
    if any(key.startswith("visual.") for key in state):
        model.load_state_dict(state)
    else:
        model.visual.load_state_dict(state)
    return model.visual


@contextlib.contextmanager
def _quiet():
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


def has_head(model: nn.Module) -> bool:
    return False


def supports(model: nn.Module) -> str:
    if not isinstance(model, VisionTransformer):
        return f"its image tower is a {type(model).__name__}; only open_clip's own ViT towers are read block by block"
    if model.attn_pool is not None or not model.transformer.batch_first:
        return "towers with attention pooling or sequence-first blocks are not supported"
    if model.preprocess_cfg.get("resize_mode", "shortest") != "shortest":
        return f"its {model.preprocess_cfg.get('resize_mode')!r} resize is not a centre crop"
    return ""


class _Readout(nn.Module):
    def __init__(self, tower: VisionTransformer):
        super().__init__()
        self.tower = tower

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled, _ = self.tower._pool(x)
        return pooled @ self.tower.proj if self.tower.proj is not None else pooled  # (B, embedding)


class _Embed(nn.Module):
    def __init__(self, tower: VisionTransformer):
        super().__init__()
        self.tower = tower

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.tower._embeds(images)  # (B, 1 + H*W, d)


def preprocess(tower: VisionTransformer) -> Preprocess:
    cfg = tower.preprocess_cfg
    size = int(cfg["size"][0] if isinstance(cfg["size"], (tuple, list)) else cfg["size"])
    return Preprocess(
        size=size,
        resize=size,
        interpolation=str(cfg.get("interpolation", "bicubic")),
        mean=tuple(float(m) for m in cfg["mean"]),
        std=tuple(float(s) for s in cfg["std"]),
    )


def wrap(tower: VisionTransformer, name: str) -> StagedModel:
    blocks = list(tower.transformer.resblocks)
    return StagedModel(
        _Embed(tower),
        blocks,
        _Readout(tower),
        transformer_points(len(blocks)),
        preprocess(tower),
        patch_grid=tuple(int(g) for g in tower.grid_size),
        special=("cls",),
    )


def class_names(model: nn.Module, name: str) -> tuple[str, ...]:
    return ()
