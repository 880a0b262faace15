"""Stage train-sae: JumpReLU, TopK and BatchTopK SAEs, one or a sweep of them per pass over the data, with schedules,
live metrics, held-out evaluation and exact resume."""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vitsae_tui.engine import config as config_mod
from vitsae_tui.engine import distributed, metrics, model_run, sweeps
from vitsae_tui.engine.activation_set import ActivationSet, find_validation_set
from vitsae_tui.engine.activation_set.reader import collect_command
from vitsae_tui.engine.config import SAETrainConfig
from vitsae_tui.engine.errors import StageError, UserError
from vitsae_tui.engine.events import Report
from vitsae_tui.engine.perf import tune_allocator
from vitsae_tui.engine.saes import architecture
from vitsae_tui.engine.saes import run as sae_run
from vitsae_tui.engine.saes.base import SparseAutoencoder, StepOutput, TrainingStep, WindowTotals
from vitsae_tui.engine.saes.eval import Evaluator
from vitsae_tui.engine.stages.run import RunRecorder, StageResult, due, recording
from vitsae_tui.engine.token_source import TokenSource
from vitsae_tui.engine.workspace import (
    Workspace,
    WorkspaceError,
    remove_partial_writes,
)

STAGE = "train-sae"


@dataclass(frozen=True)
class TrainSAEResult(StageResult):
    step: int
    metrics: dict[str, Any]


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
    with recording(STAGE, report, stop) as rec:
        resumed = sweeps.runs_of(ws, resume) if resume else []
        if resume:
            # before anything reads the runs; rank 0 alone claims them (others would find them claimed)
            if distributed.env_rank() == 0:
                for name in resumed:
                    rec.claim(ws.run_dir("saes", name))
            cfgs = [sae_run.read_config(ws, name) for name in resumed]
        elif not cfgs[0].activations:
            raise StageError("no activation set given; pass --activations SET (see `vitsae-tui runs`)")
        sweeps.check_shared(cfgs)
        cfg = cfgs[0]
        rec.ranks = ranks = distributed.setup(cfg.device)
        ranks.check_divisible(cfg.batch_size)
        one_process = next((c.arch for c in cfgs if architecture(c.arch).one_process), None)
        if ranks.enabled and one_process:
            raise StageError(
                f"{one_process} trains in one process (its selection spans the whole batch); "
                "train it without torchrun, or pick another architecture under torchrun"
            )
        store = ActivationSet(ws.run_dir("activations", cfg.activations))
        run_dirs = []
        for member_cfg, name in zip(cfgs, resumed or [None] * len(cfgs)):
            run_dirs.append(ws.run_dir("saes", ranks.on_main(lambda c=member_cfg, n=name: _claim_run(ws, c, n, rec))))
            rec.run_dir, rec.also_failed = run_dirs[0], run_dirs[1:]  # the whole sweep fails with its first SAE
        if len(cfgs) > 1 and not resume and rec.is_main:
            sweep_name = sweeps.record(ws, cfg.activations, [d.name for d in run_dirs])
            rec.log(f"{sweep_name}: {len(cfgs)} SAEs in one pass (resume with --resume {sweep_name})")
        rec.started(config_mod.to_dict(cfg), resumed=resume is not None)
        results = SAETraining(cfgs, ws, store, run_dirs, rec, resume is not None, emulate_bf16).fit()
        distributed.teardown(ranks)
        return results


def _claim_run(ws: Workspace, cfg, resume: str | None, rec: RunRecorder) -> str:
    """The run folder to write, claimed for this process: the resumed one, or a new one with its config."""
    if resume:
        remove_partial_writes(ws.run_dir("saes", resume))  # a dead owner's half-written checkpoint
        return resume

    def setup(run_dir: Path) -> None:
        rec.claim(run_dir)
        sae_run.write_config(run_dir, cfg)

    return ws.new_run("saes", "sae", setup).name


def _load_eval_model(ws: Workspace, store: ActivationSet, device, rec: RunRecorder):
    provenance = store.provenance
    try:
        loaded = model_run.load_model(ws, provenance.model_run, provenance.checkpoint, device, provenance.data)
    except WorkspaceError as e:
        rec.log(f"spliced-in evaluation is off: {e}", "warning")
        return None
    if loaded.checkpoint_sha256 != provenance.checkpoint_sha256:
        rec.log(
            f"spliced-in evaluation is off: models/{provenance.model_run} changed since "
            f"activations/{store.path.name} was collected",
            "warning",
        )
        return None
    mismatch = model_run.label_space_mismatch(loaded.class_names, store.class_names)
    if mismatch:
        rec.log(f"spliced-in evaluation is off: {mismatch}; FVU, L0 and density are still measured", "warning")
        return None
    return loaded.model


def _model_data(ws: Workspace, model: str):
    """The data a model run was trained on, or None when its config cannot be read."""
    try:
        return model_run.model_data(ws, model)
    except (UserError, OSError):
        return None


def _validation_set(ws: Workspace, cfg: SAETrainConfig, store: ActivationSet, rec: RunRecorder) -> ActivationSet | None:
    """The set the SAE is evaluated on: the one named, else the model's val split at the same hook, else None."""
    name = cfg.eval_activations or find_validation_set(ws.kind_dir("activations"), store.provenance)
    if not name:
        p = store.provenance
        if p.split == "all":  # every image of the folder: there is no validation split to collect
            message = (
                f"activations/{store.path.name} holds every image of {p.data.label} (split all): every "
                f"{cfg.heldout_every}th image is held out of the SAE's training and evaluated on"
            )
            rec.log(message)
            return None
        command = collect_command(ws.cli_args, p, "val", _model_data(ws, p.model_run))
        rec.log(
            "no validation split of this model and hook is collected: evaluating on every "
            f"{cfg.heldout_every}th training image (the classifier trained on them); collect it with "
            f"`{command}`",
            "warning",
        )
        return None
    validation = ActivationSet(ws.run_dir("activations", name))
    p, q = store.provenance, validation.provenance
    if (p.model_run, p.checkpoint_sha256, p.hook) != (q.model_run, q.checkpoint_sha256, q.hook):
        raise StageError(
            f"activations/{name} was collected from {q.model_run} at {q.hook}, not from the checkpoint of "
            f"{p.model_run} at {p.hook} that activations/{store.path.name} holds; pick a set of the same model and hook"
        )
    rec.log(f"evaluating on activations/{name} ({validation.n_images} images of the {q.split} split)")
    return validation


class Window:
    """Metric sums since the last log row, kept on the device: reading them each step would make the GPU wait."""

    NAMES = tuple(f.name for f in dataclasses.fields(WindowTotals))

    def __init__(self, device: torch.device):
        self.sums = torch.zeros(len(self.NAMES), dtype=torch.float64, device=device)

    def add(self, out: StepOutput, sq_dev: torch.Tensor, n: int) -> None:
        # scalar arguments only: a tensor built from a Python number would be a host-to-device copy every step
        self.sums[0] += out.l0.double() * n
        self.sums[1] += out.mse.double() * n
        self.sums[2] += sq_dev
        self.sums[3] += n
        if out.in_window is not None:  # an architecture without a learned threshold leaves its θ statistics at 0
            self.sums[4] += out.in_window.double() * n
            self.sums[5] += out.theta_reached.double() * n

    def load(self, saved: dict[str, Any]) -> None:
        # a checkpoint from before the window statistics carries none: they restart at zero
        values = [float(saved.get(k, 0.0)) for k in self.NAMES]
        self.sums = torch.tensor(values, dtype=torch.float64, device=self.sums.device)

    def totals(self, ranks: distributed.Ranks, stop_asked: bool) -> tuple[WindowTotals, bool]:
        """The sums over every rank, and whether any rank was asked to stop (one reduction for both)."""
        flag = torch.tensor([float(stop_asked)], dtype=torch.float64, device=self.sums.device)
        values = ranks.all_reduce(torch.cat([self.sums, flag])).tolist()
        return WindowTotals(*values[:-1]), values[-1] > 0


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
    latest: metrics.SAEStep | None = None
    totals: WindowTotals | None = None

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

    def metrics_row(self, totals: WindowTotals, seconds: float) -> metrics.SAEStep:
        cfg = self.cfg
        dead = float(self.dead_mask().float().mean()) if self.tokens_seen >= cfg.dead_window_tokens else 0.0
        return metrics.SAEStep(
            run=self.name,
            step=self.step,
            tokens=self.tokens_seen,
            mse=totals.sq_err / totals.tokens,
            fvu=totals.sq_err / max(totals.sq_dev, 1e-12),
            l0=totals.l0 / totals.tokens,
            dead_fraction=dead,
            lr=self.optimizer.param_groups[0]["lr"],
            tokens_per_s=totals.tokens / max(seconds, 1e-9),
            arch=self.step_fn.metrics(totals, self.step),
        )


def _member(
    cfg: SAETrainConfig,
    store: ActivationSet,
    run_dir: Path,
    rec: RunRecorder,
    resuming: bool,
    compute_dtype: torch.dtype,
    in_sweep: bool,
    scratch: dict,
) -> Member:
    ranks = rec.ranks
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
        rec.truncate_metrics(None, run_dir)
        rec.log(f"{run_dir.name} had no checkpoint yet: it starts from step 0")
    elif resuming:
        _restore(member, store, rec)
    ranks.broadcast_(sae.parameters())
    if rec.is_main:
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


def _restore(member: Member, store: ActivationSet, rec: RunRecorder) -> None:
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
        if rec.is_main:  # the window's sums so far are global: one rank carries them on
            member.window.load(state["window"])
    except (KeyError, RuntimeError, ValueError, TypeError, AttributeError):
        raise StageError(f"the checkpoint in saes/{run_dir.name} does not match its config; start a new run") from None
    rec.truncate_metrics(member.step, run_dir)
    rec.log(f"resuming {run_dir.name} at step {member.step} of {member.cfg.total_steps}")


class SAETraining:
    """One pass over the data that trains every SAE of a sweep on the same batches, shaped like SAELens's fit():
    a step per member, then the logging window, evaluation and checkpoints each at its own cadence."""

    def __init__(
        self,
        cfgs: list[SAETrainConfig],
        ws: Workspace,
        store: ActivationSet,
        run_dirs: list[Path],
        rec: RunRecorder,
        resuming: bool,
        emulate_bf16: bool = False,
    ):
        self.cfg, self.store, self.rec = cfgs[0], store, rec  # the fields every member shares (sweeps.check_shared)
        self.ranks, self.device = rec.ranks, rec.ranks.device
        if self.device.type == "cpu":
            tune_allocator()
        bf16 = self.cfg.bf16 and (self.device.type == "cuda" or emulate_bf16)
        compute_dtype = torch.bfloat16 if bf16 else torch.float32
        scratch: dict = {}  # the fused steps' buffers, shared: the SAEs step one after another
        self.members = [
            _member(c, store, d, rec, resuming, compute_dtype, len(cfgs) > 1, scratch) for c, d in zip(cfgs, run_dirs)
        ]
        self.scale = float(self.members[0].sae.input_scale)
        if any(float(m.sae.input_scale) != self.scale for m in self.members):
            raise StageError("these SAEs were trained with different input scales; resume them one at a time")
        cfg = self.cfg
        resident = {"auto": None, "yes": True, "no": False}[cfg.resident]
        self.source = TokenSource(
            store,
            self.device,
            cfg.batch_size,
            cfg.seed,
            resident=resident,
            heldout_every=cfg.heldout_every,
            part=self.ranks.local_rows,
        )
        self.evaluator = None
        if rec.is_main:
            model = _load_eval_model(ws, store, self.device, rec)
            self.evaluator = Evaluator(
                store, cfg.heldout_every, self.device, model, _validation_set(ws, cfg, store, rec)
            )
            if len(self.evaluator.image_ids) == 0:
                rec.log(
                    f"activations/{store.path.name} has {store.n_images} images, too few to hold every "
                    f"{cfg.heldout_every}th out: nothing is evaluated; pass a smaller --heldout-every or collect a "
                    "validation split",
                    "warning",
                )
        self.mean_scaled = torch.from_numpy(store.mean.astype(np.float32)).to(self.device) * self.scale
        self.window_start = time.perf_counter()

    def fit(self) -> list[TrainSAEResult]:
        self._announce()
        total, rec = self.cfg.total_steps, self.rec
        stopped = False
        step = min(m.step for m in self.members)  # a kill between two members' checkpoints leaves some ahead: they wait
        while step < total and not stopped:
            epoch, skip = divmod(step, self.source.batches_per_epoch())
            for x_raw, n_global in self.source.epoch(epoch, skip_batches=skip):
                active = self._train_step(x_raw.mul_(self.scale), n_global, step)
                step += 1
                stopped = self._log(active, step)
                self._evaluate_and_checkpoint(active, step)
                rec.progress(step, total, "steps")
                if step >= total:
                    break
                if stopped or (rec.stop.is_set() and not self.ranks.enabled):
                    stopped = True
                    break
        return self._finish(step, stopped)

    def _announce(self) -> None:
        cfg, ranks, source, rec = self.cfg, self.ranks, self.source, self.rec
        for m in self.members:
            rec.status(
                "running",
                m.run_dir,
                step=m.step,
                total_steps=cfg.total_steps,
                device=str(self.device),
                message="",
                world_size=ranks.world_size,
            )
        processes = f" x {ranks.world_size} processes" if ranks.enabled else ""
        whole_set = ", the whole set: smaller than --batch-size" if source.tokens_per_step < cfg.batch_size else ""
        tokens = cfg.total_steps * source.tokens_per_step
        for m in self.members:
            rec.log(
                f"training {m.name} ({m.cfg.arch}, {m.cfg.sparsity}) on {self.device}{processes} "
                f"({'resident' if source.resident else 'streamed'} data): {self.store.d_model} -> {m.sae.d_sae} "
                f"features, {cfg.total_steps} steps of {source.tokens_per_step} tokens ({tokens:,} in all{whole_set}), "
                f"input scale {self.scale:.4g}"
            )

    def _train_step(self, x: torch.Tensor, n_global: int, step: int) -> list[Member]:
        """One optimizer step of every member at `step` on the batch x; returns them."""
        active = [m for m in self.members if m.step == step]
        sq_dev = (x - self.mean_scaled).pow(2).sum(dtype=torch.float64)  # once per batch, whatever the number of SAEs
        for m in active:
            m.train_step(x, n_global, self.ranks, sq_dev)
        return active

    def _log(self, active: list[Member], step: int) -> bool:
        """At the logging or checkpoint cadence: the window's sums over ranks, checked finite and (when logging)
        written as a row; returns whether any rank was asked to stop (torchrun only: one process checks each step)."""
        cfg = self.cfg
        logging = due(step, cfg.log_every, cfg.total_steps)
        if not (logging or step % cfg.checkpoint_every == 0):
            return False
        now = time.perf_counter()
        stop_asked = False
        for m in active:
            # one reduction agrees on the sums, on finiteness and on stopping: every rank leaves together
            m.totals, asked = m.window.totals(self.ranks, self.rec.stop.is_set())
            _check_finite(m.totals, m.step, m.cfg.lr, m.name)
            stop_asked = stop_asked or asked
            if logging:  # tokens/s per SAE: the wall time is the whole pass's, shared by every SAE
                m.latest = m.metrics_row(m.totals, now - self.window_start)
                self.rec.metrics(m.latest, m.run_dir)
                m.window = Window(self.device)
        if logging:
            self.window_start = now
        return stop_asked and self.ranks.enabled

    def _evaluate_and_checkpoint(self, active: list[Member], step: int) -> None:
        cfg, rec = self.cfg, self.rec
        for m in active:
            if self.evaluator is not None and due(step, cfg.eval_every, cfg.total_steps):
                row = self.evaluator.evaluate(m.sae, m.name, step)
                if row is not None:
                    rec.metrics(row, m.run_dir)
            if step % cfg.checkpoint_every == 0 and rec.is_main:
                _checkpoint(m, m.totals)
                rec.status("running", m.run_dir, step=m.step)

    def _finish(self, step: int, stopped: bool) -> list[TrainSAEResult]:
        rec = self.rec
        results = [self._finish_member(m, stopped) for m in self.members]
        if len(self.members) > 1:
            for m, r in zip(self.members, results):
                rec.log(f"{m.name} ({m.cfg.arch}, {m.cfg.sparsity}, x{m.cfg.expansion}): {_result_line(r)}")
        rec.progress(step, self.cfg.total_steps, "steps", final=True)
        rec.finished(results[0].metrics, stopped, status=False)  # each member wrote its own
        return results

    def _finish_member(self, m: Member, stopped: bool) -> TrainSAEResult:
        rec, store = self.rec, self.store
        totals, _ = m.window.totals(self.ranks, False)
        _check_finite(totals, m.step, m.cfg.lr, m.name)
        summary = _window_summary(m.latest)
        summary.update(step=m.step, tokens=m.tokens_seen, elapsed_s=round(rec.meter.elapsed_s, 1))
        if rec.is_main:
            _checkpoint(m, totals)
            rec.artifact(m.run_dir / "sae.safetensors", "SAE checkpoint")
            if not stopped:
                model_run_name = store.provenance.model_run
                export = sae_run.export_saelens(m.run_dir, m.sae, store.hook, store.tokens_per_image, model_run_name)
                rec.artifact(export, "SAELens export")
                last_eval = metrics.latest(metrics.read_rows(m.run_dir / metrics.METRICS_FILE, STAGE), metrics.SAEEval)
                summary.update(metrics.values(last_eval) if last_eval is not None else {})
                summary.pop(metrics.STEP.key, None)
                summary.update(step=m.step)
            rec.status("stopped" if stopped else "finished", m.run_dir, **summary, message="")
        return TrainSAEResult(m.run_dir, stopped, m.step, summary)


def _window_summary(latest: metrics.SAEStep | None) -> dict[str, float]:
    """What an SAE's summary keeps of its last training window: reconstruction, sparsity, the architecture's own."""
    if latest is None:
        return {}
    window = metrics.values(latest)
    kept = {m.key for m in metrics.SAE_SUMMARY} | set(latest.arch)
    return {k: v for k, v in window.items() if k in kept}


def _result_line(r: TrainSAEResult) -> str:
    shown = [metrics.L0, metrics.FVU, metrics.EVAL_KL]
    parts = [f"{m.label} {format(r.metrics[m.key], m.digits)}" for m in shown if m.key in r.metrics]
    return ", ".join(parts) or "no metrics yet"


def _checkpoint(m: Member, totals: WindowTotals) -> None:
    window = dataclasses.asdict(totals)  # the window's sums so far: a resume carries them on
    sae_run.save_checkpoint(m.run_dir, m.sae, m.optimizer, m.step, m.tokens_seen, m.last_fired, window)


def _all_reduced_grads(
    out: dict[str, torch.Tensor] | None,
    sae,
    x: torch.Tensor,
    n_global: int,
    ranks: distributed.Ranks,
) -> torch.Tensor:
    """Gradients of the global batch's loss on every rank; returns which features fired anywhere in it."""
    if out is not None:
        fired = out.fired
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


def _check_finite(totals: WindowTotals, step: int, lr: float, run: str) -> None:
    """Raise before anything is logged or checkpointed once the loss has gone non-finite."""
    value = totals.sq_err
    if not math.isfinite(value):
        raise StageError(
            f"the loss of {run} became {value} by step {step}; start a new run with a --lr below {lr:g} "
            "(a resumed run keeps its own settings)"
        )
