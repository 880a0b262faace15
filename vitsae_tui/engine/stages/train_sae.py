"""Stage train-sae: JumpReLU, TopK and BatchTopK SAEs, one or a sweep of them per pass over the data, with schedules,
live metrics, held-out evaluation and exact resume."""

from __future__ import annotations

import contextlib
import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vitsae_tui.engine import config as config_mod
from vitsae_tui.engine import distributed, model_run, sweeps
from vitsae_tui.engine.activation_set import ActivationSet, find_validation_set
from vitsae_tui.engine.activation_set.reader import collect_command
from vitsae_tui.engine.config import SAETrainConfig
from vitsae_tui.engine.errors import StageError, UserError
from vitsae_tui.engine.events import ArtifactWritten, Finished, Log, Metrics, Progress, RateMeter, Report, Started
from vitsae_tui.engine.perf import tune_allocator
from vitsae_tui.engine.saes import architecture
from vitsae_tui.engine.saes import run as sae_run
from vitsae_tui.engine.saes.base import SparseAutoencoder, TrainingStep
from vitsae_tui.engine.saes.eval import Evaluator
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
class TrainSAEResult:
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
) -> TrainSAEResult:
    """Train (or resume) a JumpReLU, TopK or BatchTopK SAE in `saes/`; returns when done or stopped, or raises
    StageError. A resumed sweep's name (`sweep-N`) resumes all its SAEs; `run_sweep` starts one.

    Under torchrun every rank calls this; rank 0 alone creates the run and writes to it. `emulate_bf16` runs the
    bf16 step off CUDA too (slow; for measuring bf16 against float32 on a CPU).
    """
    return _run([cfg], ws, report, stop, resume, emulate_bf16)[0]


def run_sweep(
    cfgs: list[SAETrainConfig],
    ws: Workspace,
    report: Report,
    stop: threading.Event,
    resume: str | None = None,
    emulate_bf16: bool = False,
) -> list[TrainSAEResult]:
    """Train several SAEs in one pass over the data (every SAE sees the same batches), grouped in sweeps/NAME.json."""
    return _run(cfgs, ws, report, stop, resume, emulate_bf16)


def _run(cfgs, ws, report, stop, resume, emulate_bf16) -> list[TrainSAEResult]:
    run_dirs: list[Path] = []
    ranks = None
    with contextlib.ExitStack() as held:  # the runs' claims, held until the stage returns
        try:
            resumed = sweeps.runs_of(ws, resume) if resume else []
            if resume:
                # before anything reads the runs; rank 0 alone claims them (others would find them claimed)
                if distributed.env_rank() == 0:
                    for name in resumed:
                        held.enter_context(claim_run(ws.run_dir("saes", name)))
                cfgs = [sae_run.read_config(ws, name) for name in resumed]
            elif not cfgs[0].activations:
                raise StageError("no activation set given; pass --activations SET (see `vitsae-tui runs`)")
            sweeps.check_shared(cfgs)
            cfg = cfgs[0]
            ranks = distributed.setup(cfg.device)
            ranks.check_divisible(cfg.batch_size)
            one_process = next((c.arch for c in cfgs if architecture(c.arch).one_process), None)
            if ranks.enabled and one_process:
                raise StageError(
                    f"{one_process} trains in one process (its selection spans the whole batch); "
                    "train it without torchrun, or pick another architecture under torchrun"
                )
            store = ActivationSet(ws.run_dir("activations", cfg.activations))
            for i, member_cfg in enumerate(cfgs):
                name = resumed[i] if resume else None
                claimed = ranks.on_main(lambda c=member_cfg, n=name: _claim_run(ws, c, n, held))
                run_dirs.append(ws.run_dir("saes", claimed))
            if len(cfgs) > 1 and not resume and ranks.is_main:
                sweep_name = sweeps.record(ws, cfg.activations, [d.name for d in run_dirs])
                report(Log(STAGE, f"{sweep_name}: {len(cfgs)} SAEs in one pass (resume with --resume {sweep_name})"))
            report(Started(STAGE, str(run_dirs[0]), config_mod.to_dict(cfg), resumed=resume is not None))
            result = _train(cfgs, ws, store, run_dirs, report, stop, resume is not None, ranks, emulate_bf16)
            distributed.teardown(ranks)
            return result
        except Exception as e:
            failure = distributed.stage_failed_on_rank(STAGE, e, report, run_dirs[0] if run_dirs else None, ranks)
            if ranks is None or ranks.is_main:
                for other in run_dirs[1:]:  # the whole sweep stopped with its first SAE
                    with contextlib.suppress(OSError):
                        write_status(other, "failed", message=str(failure))
            raise failure from e


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


def _model_data(ws: Workspace, model: str):
    """The data a model run was trained on, or None when its config cannot be read."""
    try:
        return model_run.read_config(ws, model).data
    except (UserError, OSError):
        return None


def _validation_set(ws: Workspace, cfg: SAETrainConfig, store: ActivationSet, report: Report) -> ActivationSet | None:
    """The set the SAE is evaluated on: the one named, else the model's val split at the same hook, else None."""
    name = cfg.eval_activations or find_validation_set(ws.kind_dir("activations"), store.provenance)
    if not name:
        p = store.provenance
        if p.split == "all":  # every image of the folder: there is no validation split to collect
            message = (
                f"activations/{store.path.name} holds every image of {p.data.label} (split all): every "
                f"{cfg.heldout_every}th image is held out of the SAE's training and evaluated on"
            )
            report(Log(STAGE, message))
            return None
        command = collect_command(ws.cli_args, p, "val", _model_data(ws, p.model_run))
        report(
            Log(
                STAGE,
                "no validation split of this model and hook is collected: evaluating on every "
                f"{cfg.heldout_every}th training image (the classifier trained on them); collect it with "
                f"`{command}`",
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


@dataclass
class Member:
    """One SAE of a pass over the data (a sweep has several): its model, optimizer, step function and counters."""

    cfg: SAETrainConfig
    run_dir: Path
    sae: SparseAutoencoder
    optimizer: torch.optim.Optimizer
    step_fn: TrainingStep
    last_fired: torch.Tensor  # (F,) tokens_seen at each feature's last firing
    window: Window
    step: int = 0
    tokens_seen: int = 0
    latest: dict[str, Any] = field(default_factory=dict)
    totals: dict[str, float] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.run_dir.name

    def dead_mask(self) -> torch.Tensor:
        return (self.tokens_seen - self.last_fired) >= self.cfg.dead_window_tokens

    def train_step(self, x: torch.Tensor, n_global: int, ranks: distributed.Ranks, sq_dev: torch.Tensor) -> None:
        """One optimizer step on the batch x; sq_dev is its summed squared deviation from the mean (FVU's baseline)."""
        cfg, sae = self.cfg, self.sae
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at(cfg, self.step) * group["lr_scale"]
        dead = self.dead_mask() if self.tokens_seen >= cfg.dead_window_tokens else None
        out = self.step_fn(x, self.step, dead) if len(x) else None
        fired = _all_reduced_grads(out, sae, x, n_global, ranks)
        if out is not None:
            self.window.add(out, sq_dev, len(x))
        sae.project_decoder_grad()
        self.optimizer.step()
        sae.after_step()
        self.tokens_seen += n_global
        self.last_fired[fired] = self.tokens_seen
        self.step += 1

    def metrics_row(self, totals: dict[str, float], seconds: float) -> dict[str, Any]:
        cfg = self.cfg
        dead = float(self.dead_mask().float().mean()) if self.tokens_seen >= cfg.dead_window_tokens else 0.0
        row = {
            "kind": "step",
            "run": self.name,
            "step": self.step,
            "tokens": self.tokens_seen,
            "mse": totals["sq_err"] / totals["tokens"],
            "fvu": totals["sq_err"] / max(totals["sq_dev"], 1e-12),
            "l0": totals["l0"] / totals["tokens"],
            "dead_fraction": dead,
        }
        row.update(self.step_fn.metrics(totals, self.step))
        row.update({"lr": self.optimizer.param_groups[0]["lr"], "tokens_per_s": totals["tokens"] / max(seconds, 1e-9)})
        return row


def _member(
    cfg: SAETrainConfig,
    store: ActivationSet,
    run_dir: Path,
    report: Report,
    resuming: bool,
    ranks: distributed.Ranks,
    compute_dtype: torch.dtype,
    in_sweep: bool,
    scratch: dict,
) -> Member:
    device = ranks.device
    sae = sae_run.build_sae(cfg, store.d_model, input_scale(store)).to(device)
    sparsity = sae.sparsity_parameters()
    weights = [p for p in sae.parameters() if not any(p is q for q in sparsity)]
    groups = [{"params": weights, "lr_scale": 1.0}]
    if sparsity:
        groups.append({"params": sparsity, "lr_scale": cfg.theta_lr_scale})
    optimizer = torch.optim.Adam(groups, lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2))
    step_fn = sae.training_step(cfg, compute_dtype, scratch)
    last_fired = torch.zeros(sae.d_sae, dtype=torch.int64, device=device)
    member = Member(cfg, run_dir, sae, optimizer, step_fn, last_fired, Window(device))
    if resuming and not sae_run.has_checkpoint(run_dir) and in_sweep:
        # killed before this SAE's first checkpoint: it starts over while the others wait for it at their steps
        if ranks.is_main:
            truncate_jsonl(run_dir / "metrics.jsonl", lambda r: False)
        report(Log(STAGE, f"{run_dir.name} had no checkpoint yet: it starts from step 0"))
    elif resuming:
        _restore(member, store, report, ranks)
    ranks.broadcast_(sae.parameters())
    if ranks.is_main:
        sae_run.SAEMeta(
            activations=store.path.name,
            hook=store.hook,
            d_in=store.d_model,
            d_sae=sae.d_sae,
            input_scale=float(sae.input_scale),
            model_run=store.provenance.model_run,
            model_checkpoint_sha256=store.provenance.checkpoint_sha256,
            architecture=cfg.arch,
        ).dump(run_dir)
    return member


def _restore(member: Member, store: ActivationSet, report: Report, ranks: distributed.Ranks) -> None:
    run_dir, sae = member.run_dir, member.sae
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
        member.optimizer.load_state_dict(state["optimizer"])
        member.step, member.tokens_seen = int(state["step"]), int(state["tokens_seen"])
        member.last_fired = state["last_fired"].to(member.last_fired.device)
        if ranks.is_main:  # the window's sums so far are global: one rank carries them on
            member.window.load(state["window"])
    except (KeyError, RuntimeError, ValueError, TypeError, AttributeError):
        raise StageError(f"the checkpoint in saes/{run_dir.name} does not match its config; start a new run") from None
    if ranks.is_main:
        saved_step = member.step
        truncate_jsonl(run_dir / "metrics.jsonl", lambda r: int(r.get("step", 0)) <= saved_step)
    report(Log(STAGE, f"resuming {run_dir.name} at step {member.step} of {member.cfg.total_steps}"))


def _train(
    cfgs: list[SAETrainConfig],
    ws: Workspace,
    store: ActivationSet,
    run_dirs: list[Path],
    report: Report,
    stop: threading.Event,
    resuming: bool,
    ranks: distributed.Ranks,
    emulate_bf16: bool = False,
) -> list[TrainSAEResult]:
    cfg, device = cfgs[0], ranks.device  # the fields every member shares (sweeps.check_shared)
    if device.type == "cpu":
        tune_allocator()
    compute_dtype = torch.bfloat16 if cfg.bf16 and (device.type == "cuda" or emulate_bf16) else torch.float32
    scratch: dict = {}  # the fused steps' buffers, shared: the SAEs step one after another
    members = [
        _member(c, store, d, report, resuming, ranks, compute_dtype, len(cfgs) > 1, scratch)
        for c, d in zip(cfgs, run_dirs)
    ]
    scale = float(members[0].sae.input_scale)
    if any(float(m.sae.input_scale) != scale for m in members):
        raise StageError("these SAEs were trained with different input scales; resume them one at a time")
    total_steps = cfg.total_steps
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
        for m in members:
            write_status(
                m.run_dir,
                "running",
                step=m.step,
                total_steps=total_steps,
                device=str(device),
                message="",
                world_size=ranks.world_size,
            )
    processes = f" x {ranks.world_size} processes" if ranks.enabled else ""
    whole_set = ", the whole set: smaller than --batch-size" if source.tokens_per_step < cfg.batch_size else ""
    for m in members:
        report(
            Log(
                STAGE,
                f"training {m.name} ({m.cfg.arch}, {m.cfg.sparsity}) on {device}{processes} "
                f"({'resident' if source.resident else 'streamed'} data): {store.d_model} -> {m.sae.d_sae} features, "
                f"{total_steps} steps of {source.tokens_per_step} tokens ({total_steps * source.tokens_per_step:,} "
                f"in all{whole_set}), input scale {scale:.4g}",
            )
        )

    meter = RateMeter()
    last_progress = 0.0
    window_start = time.perf_counter()
    stopped = False
    step = min(m.step for m in members)  # a kill between two members' checkpoints leaves some ahead: they wait
    batches_per_epoch = source.batches_per_epoch()
    while step < total_steps and not stopped:
        epoch, skip = divmod(step, batches_per_epoch)
        for x_raw, n_global in source.epoch(epoch, skip_batches=skip):
            x = x_raw.mul_(scale)
            active = [m for m in members if m.step == step]
            sq_dev = (x - mean_scaled).pow(2).sum(dtype=torch.float64)  # once per batch, whatever the number of SAEs
            for m in active:
                m.train_step(x, n_global, ranks, sq_dev)
            step += 1
            logging = step % cfg.log_every == 0 or step == total_steps
            checkpointing = step % cfg.checkpoint_every == 0
            if logging or checkpointing:
                now = time.perf_counter()
                stop_asked = False
                for m in active:
                    # one reduction agrees on the sums, on finiteness and on stopping: every rank leaves together
                    m.totals, asked = m.window.totals(ranks, stop.is_set())
                    _check_finite(m.totals, m.step, m.cfg.lr, m.name)
                    stop_asked = stop_asked or asked
                    if logging:  # tokens/s per SAE: the wall time is the whole pass's, shared by every SAE
                        m.latest = m.metrics_row(m.totals, now - window_start)
                        if ranks.is_main:
                            append_jsonl(m.run_dir / "metrics.jsonl", m.latest)
                        report(Metrics(STAGE, m.latest))
                        m.window = Window(device)
                if logging:
                    window_start = now
                if stop_asked and ranks.enabled:
                    stopped = True
            for m in active:
                if evaluator is not None and (step % cfg.eval_every == 0 or step == total_steps):
                    row = {"kind": "eval", "run": m.name, "step": step, **evaluator.evaluate(m.sae)}
                    append_jsonl(m.run_dir / "metrics.jsonl", row)
                    report(Metrics(STAGE, row))
                if checkpointing and ranks.is_main:
                    _checkpoint(m, m.totals)
                    write_status(m.run_dir, "running", step=m.step)
            now = time.perf_counter()
            if now - last_progress >= PROGRESS_EVERY_S:
                last_progress = now
                report(Progress(STAGE, step, total_steps, "steps", meter.elapsed_s, meter.update(step)))
            if step >= total_steps:
                break
            if stopped or (stop.is_set() and not ranks.enabled):
                stopped = True
                break

    results = [_finish(m, store, report, ranks, stopped, meter) for m in members]
    if len(members) > 1:
        for m, r in zip(members, results):
            report(Log(STAGE, f"{m.name} ({m.cfg.arch}, {m.cfg.sparsity}, x{m.cfg.expansion}): {_result_line(r)}"))
    report(Progress(STAGE, step, total_steps, "steps", meter.elapsed_s, 0.0))
    report(Finished(STAGE, str(members[0].run_dir), results[0].metrics, stopped))
    return results


def _finish(
    m: Member, store: ActivationSet, report: Report, ranks: distributed.Ranks, stopped: bool, meter: RateMeter
) -> TrainSAEResult:
    totals, _ = m.window.totals(ranks, False)
    _check_finite(totals, m.step, m.cfg.lr, m.name)
    summary = {
        k: v for k, v in m.latest.items() if k in ("mse", "fvu", "l0", "dead_fraction", "in_window", "theta_reached")
    }
    summary.update(step=m.step, tokens=m.tokens_seen, elapsed_s=round(meter.elapsed_s, 1))
    if ranks.is_main:
        _checkpoint(m, totals)
        report(ArtifactWritten(STAGE, str(m.run_dir / "sae.safetensors"), "SAE checkpoint"))
        if not stopped:
            export = sae_run.export_saelens(
                m.run_dir, m.sae, store.hook, store.tokens_per_image, store.provenance.model_run
            )
            report(ArtifactWritten(STAGE, str(export), "SAELens export"))
            last_eval = next(
                (r for r in reversed(read_jsonl(m.run_dir / "metrics.jsonl")) if r.get("kind") == "eval"), {}
            )
            summary.update(
                {k: v for k, v in last_eval.items() if k.startswith(("eval_", "ce_", "acc_", "kl_")) and k != "density"}
            )
        write_status(m.run_dir, "stopped" if stopped else "finished", **summary, message="")
    return TrainSAEResult(m.run_dir, m.step, summary, stopped)


def _result_line(r: TrainSAEResult) -> str:
    m = r.metrics
    parts = [f"L0 {m['l0']:.1f}" if "l0" in m else "", f"FVU {m['fvu']:.4f}" if "fvu" in m else ""]
    parts.append(f"KL {m['eval_kl']:.4f}" if "eval_kl" in m else "")
    return ", ".join(p for p in parts if p) or "no metrics yet"


def _checkpoint(m: Member, totals: dict[str, float]) -> None:
    sae_run.save_checkpoint(m.run_dir, m.sae, m.optimizer, m.step, m.tokens_seen, m.last_fired, totals)


def _all_reduced_grads(
    out: dict[str, torch.Tensor] | None,
    sae,
    x: torch.Tensor,
    n_global: int,
    ranks: distributed.Ranks,
) -> torch.Tensor:
    """Gradients of the global batch's loss on every rank; returns which features fired anywhere in it."""
    if out is not None:
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


def _check_finite(totals: dict[str, float], step: int, lr: float, run: str) -> None:
    """Raise before anything is logged or checkpointed once the loss has gone non-finite."""
    value = totals["sq_err"]
    if not math.isfinite(value):
        raise StageError(
            f"the loss of {run} became {value} by step {step}; start a new run with a --lr below {lr:g} "
            "(a resumed run keeps its own settings)"
        )
