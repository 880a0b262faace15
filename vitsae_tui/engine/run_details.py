"""One line describing a run from its status, in the terms of its own kind (home's table and `vitsae-tui runs`)."""

from __future__ import annotations

import math
from typing import Any

from vitsae_tui.engine.saes import ARCHITECTURES, DEFAULT_ARCH
from vitsae_tui.engine.text import MAX_MESSAGE, shown
from vitsae_tui.engine.workspace import RunInfo


def _number(status: dict[str, Any], key: str) -> float | None:
    value = status.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _count(status: dict[str, Any], key: str) -> int | None:
    value = status.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _steps(status: dict[str, Any]) -> str:
    step, total = _count(status, "step"), _count(status, "total_steps")
    if step is None:
        return ""
    return f"step {step:,}" + (f"/{total:,}" if total else "")


def _sae_kind(config: dict[str, Any]) -> str | None:
    """'topk k 16', 'jumprelu λ 0.003' (a sweep's SAEs differ only there); None for a config that says neither."""
    arch = config.get("arch", DEFAULT_ARCH)
    known = ARCHITECTURES.get(arch) if isinstance(arch, str) else None  # untrusted: any JSON value
    value = _number(config, known.knob) if known is not None else None
    return f"{arch} {known.symbol} {value:g}" if value is not None else None


def describe_run(run: RunInfo) -> str:
    """What a person wants to know about a run at a glance; a failed run shows its message (safe to show)."""
    status = run.status
    if run.state == "failed":
        return shown(status.get("message", ""), MAX_MESSAGE)
    parts: list[str | None] = []
    if run.kind == "models" and run.config.get("spec"):
        params = _count(status, "parameters")
        parts = [
            f"imported from {shown(str(run.config['spec']), 60)}",
            f"{params / 1e6:.1f}M parameters" if params is not None else None,
        ]
    elif run.kind == "models":
        acc = _number(status, "best_val_accuracy")
        parts = [f"val acc {acc:.1%}" if acc is not None else None, _steps(status), str(run.config.get("preset") or "")]
    elif run.kind == "activations":
        images, tokens, d = _count(status, "images"), _count(status, "tokens"), _count(status, "d_model")
        probe = _number(status, "probe_val_accuracy")
        parts = [
            f"{images:,} images" if images is not None else None,
            f"{tokens:,} tokens" if tokens is not None else None,
            f"d {d}" if d is not None else None,
            str(status.get("dtype") or ""),
            f"linear probe {probe:.1%}" if probe is not None else None,
        ]
    elif run.kind == "saes":
        fvu, l0, dead = _number(status, "fvu"), _number(status, "l0"), _number(status, "dead_fraction")
        tokens = _count(status, "tokens")
        parts = [
            _sae_kind(run.config),
            f"FVU {fvu:.3f}" if fvu is not None else None,
            f"L0 {l0:.1f}" if l0 is not None else None,
            f"dead {dead:.1%}" if dead is not None else None,
            f"{tokens / 1e6:.1f}M tokens trained" if tokens is not None else None,
            _steps(status),
        ]
    elif run.kind == "features":
        alive, features = _count(status, "alive"), _count(status, "features")
        sae_f1, neuron_f1 = _number(status, "mean_sae_f1"), _number(status, "mean_neuron_f1")
        baseline_f1 = _number(status, "mean_baseline_f1")
        parts = [
            f"{alive:,}/{features:,} features alive" if alive is not None and features is not None else None,
            f"held-out concept F1 SAE {sae_f1:.3f} vs neuron {neuron_f1:.3f} (object baseline {baseline_f1:.3f})"
            if sae_f1 is not None and neuron_f1 is not None and baseline_f1 is not None
            else None,
        ]
    return shown(" · ".join(p for p in parts if p), MAX_MESSAGE)
