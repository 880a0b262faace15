"""Device choice (cuda > mps > cpu, overridable) and mixed precision."""

from __future__ import annotations

import contextlib

import torch

from vitsae_tui.engine.errors import UserError


class DeviceError(UserError, RuntimeError):
    """A requested device that this machine does not have."""


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DeviceError(f"{name!r} is not a device; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"{name} was asked for but no CUDA GPU is visible; use --device auto or cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise DeviceError(f"{name} does not exist: this machine has {torch.cuda.device_count()} GPU(s)")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise DeviceError("mps was asked for but is not available; use --device auto or cpu")
    return device


def autocast(device: torch.device, bf16: bool):
    """bf16 autocast on CUDA when asked; full precision elsewhere."""
    if bf16 and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
