"""SAE architectures, one module each behind `base.SparseAutoencoder`, registered here by name.

This registry loads no torch (configs, the CLI's help and home read it); `Architecture.sae_class()` imports the
architecture's module on first use. A new architecture is a module in this package and one entry below.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Literal

ArchName = Literal["jumprelu", "topk", "batchtopk"]
"""the names `SAETrainConfig.arch` accepts: the keys of ARCHITECTURES"""
DEFAULT_ARCH: ArchName = "jumprelu"
WEIGHTS = frozenset({"W_enc", "W_dec", "b_enc", "b_dec", "threshold", "input_scale"})
"""the tensors of every architecture's saved state"""


@dataclass(frozen=True)
class Architecture:
    name: str
    short: str
    """its label in the compare table and plot"""
    knob: str
    """the config field that sets its sparsity (a sweep varies it)"""
    symbol: str
    """how that field is printed ('λ 0.003', 'k 16')"""
    module: str
    class_name: str
    tensors: frozenset[str] = WEIGHTS
    one_process: bool = False
    """trains in one process only (its selection spans the whole batch, which torchrun would split)"""

    def sae_class(self):
        return getattr(importlib.import_module(f"vitsae_tui.engine.saes.{self.module}"), self.class_name)

    def sparsity_label(self, cfg) -> str:
        return f"{self.symbol} {getattr(cfg, self.knob):g}"


ARCHITECTURES: dict[str, Architecture] = {
    a.name: a
    for a in (
        Architecture("jumprelu", "jump", "l0_coeff", "λ", "jumprelu", "JumpReLUSAE"),
        Architecture("topk", "topk", "k", "k", "topk", "TopKSAE", WEIGHTS | {"k"}),
        Architecture("batchtopk", "btopk", "k", "k", "batchtopk", "BatchTopKSAE", WEIGHTS | {"k"}, one_process=True),
    )
}


def architecture(name: str) -> Architecture:
    """The registered architecture `name` (callers validate names first: configs do on construction)."""
    return ARCHITECTURES[name]


def short_name(name: str) -> str:
    """The compare label of an architecture, or the name itself when a run records one this version lacks."""
    known = ARCHITECTURES.get(name)
    return known.short if known is not None else name
