"""Stage train-sae: JumpReLU SAE training with schedules, live metrics, held-out evaluation and exact resume."""

from __future__ import annotations

import contextlib
import math
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vitsae_tui.engine import config as config_mod
from vitsae_tui.engine import distributed, model_run, sae_run
from vitsae_tui.engine.activation_set import ActivationSet, find_validation_set
from vitsae_tui.engine.config import SAETrainConfig
from vitsae_tui.engine.errors import StageError
from vitsae_tui.engine.events import ArtifactWritten, Finished, Log, Metrics, Progress, RateMeter, Report, Started
from vitsae_tui.engine.perf import tune_allocator
from vitsae_tui.engine.sae import FusedStep, JumpReLUSAE
from vitsae_tui.engine.sae_eval import Evaluator
from vitsae_tui.engine.token_source import TokenSource
from vitsae_tui.engine.workspace import (
    Workspace,
    WorkspaceError,
    append_jsonl,
    claim_run,
    read_jsonl,
    remove_partial_writes,
    truncate_jsonl,
    write_status,
)

STAGE = "train-sae"
PROGRESS_EVERY_S = 0.25


@dataclass(frozen=True)
class SAERun:
    run_dir: Path
    step: int
    metrics: dict[str, Any]
    stopped: bool


def lr_at(cfg: SAETrainConfig, step: int) -> float:
    """Linear warm-up, constant, then linear decay to zero over the final fraction."""
    total = cfg.total_steps
    warmup = max(1, int(cfg.lr_warmup_fraction * total))
    decay_start = total - int(cfg.lr_decay_fraction * total)
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    if step >= decay_start:
        return cfg.lr * max(0.0, (total - step) / max(1, total - decay_start))
    return cfg.lr


def l0_coeff_at(cfg: SAETrainConfig, step: int) -> float:
    warmup = int(cfg.l0_warmup_fraction * cfg.total_steps)
    return cfg.l0_coeff * min(1.0, (step + 1) / warmup) if warmup > 0 else cfg.l0_coeff


def input_scale(store: ActivationSet) -> float:
    """The scalar s with E||s x||^2 = 1 (the paper's convention, which eps = theta_0 = 0.001 are tuned for)."""
    mean_square_norm = float(np.sum(store.var + store.mean**2))
    return 1.0 / math.sqrt(mean_square_norm) if mean_square_norm > 0 else 1.0


def run(
    cfg: SAETrainConfig,
    ws: Workspace,
    report: Report,
    stop: threading.Event,
    resume: str | None = None,
    emulate_bf16: bool = False,
) -> SAERun:
    """Train (or resume) a JumpReLU SAE in `saes/`; returns when done or stopped, or raises StageError.

    Under torchrun every rank calls this; rank 0 alone creates the run and writes to it. `emulate_bf16` runs the
    bf16 step off CUDA too (slow; for measuring bf16 against float32 on a CPU).
    """
    run_dir: Path | None = None
    ranks = None
    with contextlib.ExitStack() as held:  # the run's claim, held until the stage returns
        try:
            if resume:
                # before anything reads the run; rank 0 alone claims it (others would find it claimed)
                if distributed.env_rank() == 0:
                    held.enter_context(claim_run(ws.run_dir("saes", resume)))
                cfg = sae_run.read_config(ws, resume)
            elif not cfg.activations:
                raise StageError("no activation set given; pass --activations SET (see `vitsae-tui runs`)")
            ranks = distributed.setup(cfg.device)
            ranks.check_divisible(cfg.batch_size)
            store = ActivationSet(ws.run_dir("activations", cfg.activations))
            run_dir = ws.run_dir("saes", ranks.on_main(lambda: _claim_run(ws, cfg, resume, held)))
            report(Started(STAGE, str(run_dir), config_mod.to_dict(cfg), resumed=resume is not None))
            result = _train(cfg, ws, store, run_dir, report, stop, resume is not None, ranks, emulate_bf16)
            distributed.teardown(ranks)
            return result
        except Exception as e:
            raise distributed.stage_failed_on_rank(STAGE, e, report, run_dir, ranks) from e


def _claim_run(ws: Workspace, cfg, resume: str | None, held: contextlib.ExitStack) -> str:
    """The run folder to write, claimed for this process: the resumed one, or a new one with its config."""
    if resume:
        remove_partial_writes(ws.run_dir("saes", resume))  # a dead owner's half-written checkpoint
        return resume

    def setup(run_dir: Path) -> None:
        held.enter_context(claim_run(run_dir))
        sae_run.write_config(run_dir, cfg)

    return ws.new_run("saes", "sae", setup).name


def _load_eval_model(ws: Workspace, store: ActivationSet, device, report: Report):
    provenance = store.provenance
    try:
        loaded = model_run.load_model(ws, provenance.model_run, provenance.checkpoint, device)
    except WorkspaceError as e:
        report(Log(STAGE, f"spliced-in evaluation is off: {e}", "warning"))
        return None
    if loaded.checkpoint_sha256 != provenance.checkpoint_sha256:
        report(
            Log(
                STAGE,
                f"spliced-in evaluation is off: models/{provenance.model_run} changed since "
                f"activations/{store.path.name} was collected",
                "warning",
            )
        )
        return None
    mismatch = model_run.label_space_mismatch(loaded.class_names, store.class_names)
    if mismatch:
        report(
            Log(STAGE, f"spliced-in evaluation is off: {mismatch}; FVU, L0 and density are still measured", "warning")
        )
        return None
    return loaded.model


def _validation_set(ws: Workspace, cfg: SAETrainConfig, store: ActivationSet, report: Report) -> ActivationSet | None:
    """The set the SAE is evaluated on: the one named, else the model's val split at the same hook, else None."""
    name = cfg.eval_activations or find_validation_set(ws.kind_dir("activations"), store.provenance)
    if not name:
        p = store.provenance
        report(
            Log(
                STAGE,
                "no validation split of this model and hook is collected: evaluating on every "
                f"{cfg.heldout_every}th training image (the classifier trained on them); collect it with "
                f"`vitsae-tui collect --model {p.model_run} --hook {p.hook} --split val`",
                "warning",
            )
        )
        return None
    validation = ActivationSet(ws.run_dir("activations", name))
    p, q = store.provenance, validation.provenance
    if (p.model_run, p.checkpoint_sha256, p.hook) != (q.model_run, q.checkpoint_sha256, q.hook):
        raise StageError(
            f"activations/{name} was collected from {q.model_run} at {q.hook}, not from the checkpoint of "
            f"{p.model_run} at {p.hook} that activations/{store.path.name} holds; pick a set of the same model and hook"
        )
    report(Log(STAGE, f"evaluating on activations/{name} ({validation.n_images} images of the {q.split} split)"))
    return validation


def _train(
    cfg: SAETrainConfig,
    ws: Workspace,
    store: ActivationSet,
    run_dir: Path,
    report: Report,
    stop: threading.Event,
    resuming: bool,
    ranks: distributed.Ranks,
    emulate_bf16: bool = False,
) -> SAERun:
    device = ranks.device
    if device.type == "cpu":
        tune_allocator()
    compute_dtype = torch.bfloat16 if cfg.bf16 and (device.type == "cuda" or emulate_bf16) else torch.float32
    scale = input_scale(store)
    sae = JumpReLUSAE(store.d_model, store.d_model * cfg.expansion, cfg.theta_init, scale, cfg.seed).to(device)
    weights = [p for name, p in sae.named_parameters() if name != "threshold"]
    groups = [{"params": weights, "lr_scale": 1.0}, {"params": [sae.threshold], "lr_scale": cfg.theta_lr_scale}]
    optimizer = torch.optim.Adam(groups, lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2))
    step_fn = FusedStep(sae, cfg.bandwidth, compute_dtype)
    total_steps = cfg.total_steps
    step, tokens_seen = 0, 0
    last_fired = torch.zeros(sae.d_sae, dtype=torch.int64, device=device)  # tokens_seen at each feature's last firing
    window = Window(device)
    metrics_path = run_dir / "metrics.jsonl"
    if resuming:
        if not sae_run.has_checkpoint(run_dir):
            raise StageError(f"no checkpoint in saes/{run_dir.name}; start a new run instead of resuming")
        trained_on = sae_run.SAEMeta.find(run_dir)
        if trained_on is not None and (trained_on.d_in, trained_on.hook) != (store.d_model, store.hook):
            raise StageError(
                f"saes/{run_dir.name} was trained on {trained_on.hook} with d_model "
                f"{trained_on.d_in}, but activations/{store.path.name} now holds {store.hook} with "
                f"d_model {store.d_model}; start a new run on this set"
            )
        state = sae_run.load_checkpoint(run_dir)
        try:
            sae.load_state_dict(state["sae"])  # with the run's own input scale
            scale = float(sae.input_scale)
            optimizer.load_state_dict(state["optimizer"])
            step, tokens_seen = int(state["step"]), int(state["tokens_seen"])
            last_fired = state["last_fired"].to(device)
            if ranks.is_main:  # the window's sums so far are global: one rank carries them on
                window.load(state["window"])
        except (KeyError, RuntimeError, ValueError, TypeError, AttributeError):
            raise StageError(
                f"the checkpoint in saes/{run_dir.name} does not match its config; start a new run"
            ) from None
        if ranks.is_main:
            saved_step = step
            truncate_jsonl(metrics_path, lambda r: int(r.get("step", 0)) <= saved_step)
        report(Log(STAGE, f"resuming {run_dir.name} at step {step} of {total_steps}"))
    ranks.broadcast_(sae.parameters())

    if ranks.is_main:
        meta = sae_run.SAEMeta(
            activations=store.path.name,
            hook=store.hook,
            d_in=store.d_model,
            d_sae=sae.d_sae,
            input_scale=scale,
            model_run=store.provenance.model_run,
            model_checkpoint_sha256=store.provenance.checkpoint_sha256,
        )
        meta.dump(run_dir)
    resident = {"auto": None, "yes": True, "no": False}[cfg.resident]
    source = TokenSource(
        store,
        device,
        cfg.batch_size,
        cfg.seed,
        resident=resident,
        heldout_every=cfg.heldout_every,
        part=ranks.local_rows,
    )
    evaluator = (
        Evaluator(
            store,
            cfg.heldout_every,
            device,
            _load_eval_model(ws, store, device, report),
            _validation_set(ws, cfg, store, report),
        )
        if ranks.is_main
        else None
    )
    mean_scaled = torch.from_numpy(store.mean.astype(np.float32)).to(device) * scale
    if ranks.is_main:
        write_status(
            run_dir,
            "running",
            step=step,
            total_steps=total_steps,
            device=str(device),
            message="",
            world_size=ranks.world_size,
        )
    processes = f" x {ranks.world_size} processes" if ranks.enabled else ""
    report(
        Log(
            STAGE,
            f"training {run_dir.name} on {device}{processes} ({'resident' if source.resident else 'streamed'} "
            f"data): {store.d_model} -> {sae.d_sae} features, {total_steps} steps of {cfg.batch_size} tokens, "
            f"input scale {scale:.4g}",
        )
    )

    meter = RateMeter()
    last_progress = 0.0
    window_start = time.perf_counter()
    stopped = False
    latest: dict[str, Any] = {}
    batches_per_epoch = source.batches_per_epoch()
    while step < total_steps and not stopped:
        epoch, skip = divmod(step, batches_per_epoch)
        for x_raw, n_global in source.epoch(epoch, skip_batches=skip):
            x = x_raw.mul_(scale)
            l0_coeff = l0_coeff_at(cfg, step)
            for group in optimizer.param_groups:
                group["lr"] = lr_at(cfg, step) * group["lr_scale"]
            fired = _step(step_fn, sae, x, l0_coeff, n_global, ranks, window, mean_scaled)
            sae.project_decoder_grad()
            optimizer.step()
            sae.normalize_decoder()
            sae.clamp_threshold()
            tokens_seen += n_global
            last_fired[fired] = tokens_seen
            step += 1
            logging = step % cfg.log_every == 0 or step == total_steps
            checkpointing = step % cfg.checkpoint_every == 0
            if logging or checkpointing:
                # one reduction agrees on the sums, on finiteness and on stopping: every rank leaves at the same step
                totals, stop_asked = window.totals(ranks, stop.is_set())
                _check_finite(totals, step, cfg.lr)
                if stop_asked and ranks.enabled:
                    stopped = True
            if logging:
                now = time.perf_counter()
                dead = (
                    float(((tokens_seen - last_fired) >= cfg.dead_window_tokens).float().mean())
                    if tokens_seen >= cfg.dead_window_tokens
                    else 0.0
                )
                latest = {
                    "kind": "step",
                    "step": step,
                    "tokens": tokens_seen,
                    "mse": totals["sq_err"] / totals["tokens"],
                    "fvu": totals["sq_err"] / max(totals["sq_dev"], 1e-12),
                    "l0": totals["l0"] / totals["tokens"],
                    "dead_fraction": dead,
                    # how often theta learns: token-feature pairs inside the window, features with any such pair
                    "in_window": totals["in_window"] / totals["tokens"],
                    "theta_reached": totals["theta_reached"] / totals["tokens"],
                    "l0_coeff": l0_coeff,
                    "lr": optimizer.param_groups[0]["lr"],
                    "tokens_per_s": totals["tokens"] / max(now - window_start, 1e-9),
                }
                if ranks.is_main:
                    append_jsonl(metrics_path, latest)
                report(Metrics(STAGE, latest))
                window, window_start = Window(device), now
            if evaluator is not None and (step % cfg.eval_every == 0 or step == total_steps):
                row = {"kind": "eval", "step": step, **evaluator.evaluate(sae)}
                append_jsonl(metrics_path, row)
                report(Metrics(STAGE, row))
            if checkpointing and ranks.is_main:
                sae_run.save_checkpoint(run_dir, sae, optimizer, step, tokens_seen, last_fired, totals)
                write_status(run_dir, "running", step=step)
            now = time.perf_counter()
            if now - last_progress >= PROGRESS_EVERY_S:
                last_progress = now
                report(Progress(STAGE, step, total_steps, "steps", meter.elapsed_s, meter.update(step)))
            if step >= total_steps:
                break
            if stopped or (stop.is_set() and not ranks.enabled):
                stopped = True
                break

    totals, _ = window.totals(ranks, False)
    _check_finite(totals, step, cfg.lr)
    summary = {
        k: v for k, v in latest.items() if k in ("mse", "fvu", "l0", "dead_fraction", "in_window", "theta_reached")
    }
    summary.update(step=step, tokens=tokens_seen, elapsed_s=round(meter.elapsed_s, 1))
    if ranks.is_main:
        sae_run.save_checkpoint(run_dir, sae, optimizer, step, tokens_seen, last_fired, totals)
        report(ArtifactWritten(STAGE, str(run_dir / "sae.safetensors"), "SAE checkpoint"))
        if not stopped:
            export = sae_run.export_saelens(
                run_dir, sae, store.hook, store.tokens_per_image, store.provenance.model_run
            )
            report(ArtifactWritten(STAGE, str(export), "SAELens export"))
            last_eval = next((r for r in reversed(read_jsonl(metrics_path)) if r.get("kind") == "eval"), {})
            summary.update(
                {k: v for k, v in last_eval.items() if k.startswith(("eval_", "ce_", "acc_")) and k != "density"}
            )
        write_status(run_dir, "stopped" if stopped else "finished", **summary, message="")
    report(Progress(STAGE, step, total_steps, "steps", meter.elapsed_s, 0.0))
    report(Finished(STAGE, str(run_dir), summary, stopped))
    return SAERun(run_dir, step, summary, stopped)


def _step(
    step_fn: FusedStep,
    sae: JumpReLUSAE,
    x: torch.Tensor,
    l0_coeff: float,
    n_global: int,
    ranks: distributed.Ranks,
    window: "Window",
    mean_scaled: torch.Tensor,
) -> torch.Tensor:
    """Gradients of the global batch's loss on every rank; returns which features fired anywhere in it."""
    if len(x):
        out = step_fn(x, l0_coeff)
        window.add(out, (x - mean_scaled).pow(2).sum(dtype=torch.float64), len(x))
        fired = out["fired"]
    else:  # a final global batch smaller than the number of ranks leaves some ranks without rows
        for p in sae.parameters():
            p.grad = torch.zeros_like(p)
        fired = torch.zeros(sae.d_sae, dtype=torch.bool, device=x.device)
    if not ranks.enabled:
        return fired
    # each rank's gradient is a mean over its rows: weighting by its share and summing gives the global mean
    params = list(sae.parameters())
    bucket = torch.cat([p.grad.reshape(-1) * (len(x) / n_global) for p in params] + [fired.float()])
    ranks.all_reduce(bucket)
    offset = 0
    for p in params:
        p.grad = bucket[offset : offset + p.numel()].view_as(p)
        offset += p.numel()
    return bucket[offset:] > 0


class Window:
    """Metric sums since the last log row, kept on the device: reading them each step would make the GPU wait."""

    NAMES = ("l0", "sq_err", "sq_dev", "tokens", "in_window", "theta_reached")

    def __init__(self, device: torch.device):
        self.sums = torch.zeros(len(self.NAMES), dtype=torch.float64, device=device)

    def add(self, step_out: dict[str, torch.Tensor], sq_dev: torch.Tensor, n: int) -> None:
        # scalar arguments only: a tensor built from a Python number would be a host-to-device copy every step
        self.sums[0] += step_out["l0"].double() * n
        self.sums[1] += step_out["mse"].double() * n
        self.sums[2] += sq_dev
        self.sums[3] += n
        self.sums[4] += step_out["in_window"].double() * n
        self.sums[5] += step_out["theta_reached"].double() * n

    def load(self, saved: dict[str, Any]) -> None:
        # a checkpoint from before the window statistics carries none: they restart at zero
        values = [float(saved.get(k, 0.0)) for k in self.NAMES]
        self.sums = torch.tensor(values, dtype=torch.float64, device=self.sums.device)

    def totals(self, ranks: distributed.Ranks, stop_asked: bool) -> tuple[dict[str, float], bool]:
        """The sums over every rank, and whether any rank was asked to stop (one reduction for both)."""
        flag = torch.tensor([float(stop_asked)], dtype=torch.float64, device=self.sums.device)
        values = ranks.all_reduce(torch.cat([self.sums, flag])).tolist()
        return dict(zip(self.NAMES, values[:-1])), values[-1] > 0


def _check_finite(totals: dict[str, float], step: int, lr: float) -> None:
    """Raise before anything is logged or checkpointed once the loss has gone non-finite."""
    value = totals["sq_err"]
    if not math.isfinite(value):
        raise StageError(
            f"the loss became {value} by step {step}; start a new run with a --lr below {lr:g} "
            "(a resumed run keeps its own settings)"
        )
