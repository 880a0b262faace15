"""Every vision model behind one protocol: named hook points over (B, T, d) tokens, `run_to` / `run_from`, the token
layout at each hook (an H x W patch grid after any special tokens), the model's own preprocessing.

`base` holds the protocol (importing torch), `native` our AlexNet + GPT classifier, `timm_models` and
`torchvision_models` wrap a library's model (imported lazily: the base install never needs them), `imported` makes
a model run of one. This module stays importable without torch: home and --help read runs through it.
"""

from __future__ import annotations

from dataclasses import dataclass

from vitsae_tui.engine.config import ConfigError


@dataclass(frozen=True)
class TokenLayout:
    """The tokens at a hook: `special` tokens (CLS, registers) first, then an H x W patch grid in row-major order."""

    grid: tuple[int, int]
    special: tuple[str, ...] = ()

    @property
    def n_special(self) -> int:
        return len(self.special)

    @property
    def n_patches(self) -> int:
        return self.grid[0] * self.grid[1]


@dataclass(frozen=True)
class Preprocess:
    """How an image becomes the model's input: short side resized to `resize` with `interpolation`, centre-cropped to
    `size` x `size`, scaled to [0, 1] and normalised by `mean` and `std` (torchvision's Resize/CenterCrop rules)."""

    size: int = 224
    resize: int = 256
    interpolation: str = "bicubic"
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    def validate(self) -> None:
        if not 16 <= self.size <= 1024 or not self.size <= self.resize <= 2048:
            raise ConfigError(f"a {self.size}px crop of a {self.resize}px resize is not a usable input size", "size")
        if self.interpolation not in ("bicubic", "bilinear", "nearest", "lanczos"):
            raise ConfigError(f"interpolation {self.interpolation!r} is not bicubic, bilinear, nearest or lanczos")
        if not all(0.01 <= s <= 10 for s in self.std) or not all(-10 <= m <= 10 for m in self.mean):
            raise ConfigError("the preprocessing's mean and std must be small positive numbers", "std")


NATIVE_PREPROCESS = Preprocess()
