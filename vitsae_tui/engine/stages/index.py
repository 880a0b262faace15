"""Stage index: the feature index of one SAE over one activation set (read it with `feature_index`).

One streaming pass (bounded memory: O(d_sae * k) plus one batch) gathers per feature its density, mean and max
activation, a histogram of activation/threshold, the exact top-k examples, a uniform reservoir of firing
examples (for activation-band "quantile" examples), and per-class firing counts. Class effects and concept
recovery are computed after the pass. The index is written to a temporary folder and renamed into place, so a
killed run never leaves an index that looks complete.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vitsae_tui.engine import config as config_mod
from vitsae_tui.engine import model_run
from vitsae_tui.engine.activation_set import ActivationSet, find_validation_set
from vitsae_tui.engine.concepts import TOP_K, ConceptReport, concept_recovery
from vitsae_tui.engine.config import IndexConfig, SAETrainConfig
from vitsae_tui.engine.device import pick_device
from vitsae_tui.engine.errors import StageError, StopRequested, UserError, check_stop
from vitsae_tui.engine.events import Report
from vitsae_tui.engine.feature_index import IndexArrays, IndexMeta, IndexSummary, index_name, write_index
from vitsae_tui.engine.saes import run as sae_run
from vitsae_tui.engine.saes.eval import heldout_images
from vitsae_tui.engine.saes.run import SAEMeta, load_sae, weights_sha256
from vitsae_tui.engine.stages.run import RunRecorder, StageResult, recording
from vitsae_tui.engine.workspace import (
    RUN_NAME,
    Workspace,
    WorkspaceError,
    atomic_torch_save,
    load_torch_file,
    remove_partial_writes,
)

STAGE = "index"
RESERVOIR = 64
HIST_BINS = np.linspace(0.0, 8.0, 17)  # log2(activation / threshold): activations start at the threshold
CONCEPT_TOKENS = 20_000
CLASS_EFFECT_IMAGES = 16
CAUSAL_IMAGES = 8
"""top images per feature on which it is zeroed to measure its causal class effect"""


def merge_top(values: torch.Tensor, tokens: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row, the k largest values, ties broken by the lower token id: (F, n) -> (F, k), deterministic."""
    order = torch.argsort(tokens, dim=1, stable=True)
    values, tokens = values.gather(1, order), tokens.gather(1, order)
    order = torch.argsort(values, dim=1, descending=True, stable=True)[:, :k]
    return values.gather(1, order), tokens.gather(1, order)


@dataclass
class _Accumulators:
    fired: torch.Tensor  # (F,) int64
    total: torch.Tensor  # (F,) float64 sum of activations
    maximum: torch.Tensor  # (F,)
    hist: torch.Tensor  # (F, bins) int64
    top_values: torch.Tensor  # (F, k)
    top_tokens: torch.Tensor  # (F, k) int64, -1 when empty
    sample_keys: torch.Tensor  # (F, R) random keys of the reservoir (smallest kept)
    sample_values: torch.Tensor
    sample_tokens: torch.Tensor
    class_counts: torch.Tensor  # (F, C) int64

    @classmethod
    def empty(cls, d_sae: int, n_classes: int, device) -> _Accumulators:
        z = lambda *s, dt=torch.float32, v=0.0: torch.full(s, v, dtype=dt, device=device)  # noqa: E731
        return cls(
            z(d_sae, dt=torch.int64),
            z(d_sae, dt=torch.float64),
            z(d_sae),
            z(d_sae, len(HIST_BINS) - 1, dt=torch.int64),
            z(d_sae, TOP_K),
            z(d_sae, TOP_K, dt=torch.int64, v=-1),
            z(d_sae, RESERVOIR, v=math.inf),
            z(d_sae, RESERVOIR),
            z(d_sae, RESERVOIR, dt=torch.int64, v=-1),
            z(d_sae, max(n_classes, 1), dt=torch.int64),
        )


def _accumulate(
    acc: _Accumulators,
    f: torch.Tensor,
    first_token: int,
    token_labels: torch.Tensor,
    threshold: torch.Tensor,
    generator: torch.Generator,
) -> None:
    """Fold one batch of feature activations f (B, F) into the accumulators."""
    B = f.shape[0]
    token_ids = torch.arange(first_token, first_token + B, device=f.device)
    fired = f > 0
    acc.fired += fired.sum(0)
    acc.total += f.sum(0, dtype=torch.float64)
    acc.maximum = torch.maximum(acc.maximum, f.amax(0))
    rows, cols = fired.nonzero(as_tuple=True)
    ratio = torch.log2(f[rows, cols] / threshold[cols].clamp_min(1e-12)).clamp_(HIST_BINS[0], HIST_BINS[-1] - 1e-6)
    bins = (ratio / (HIST_BINS[1] - HIST_BINS[0])).long()
    acc.hist.view(-1).index_add_(0, cols * acc.hist.shape[1] + bins, torch.ones_like(bins))
    k = min(2 * TOP_K, B)  # extra candidates so ties at the boundary still resolve by token id
    cand_values, cand_rows = torch.topk(f.t(), k, dim=1)
    cand_values = torch.where(cand_values > 0, cand_values, torch.zeros_like(cand_values))
    cand_tokens = torch.where(cand_values > 0, token_ids[cand_rows], torch.full_like(cand_rows, -1))
    acc.top_values, acc.top_tokens = merge_top(
        torch.cat([acc.top_values, cand_values], 1), torch.cat([acc.top_tokens, cand_tokens], 1), TOP_K
    )
    keys = torch.full_like(f, math.inf)
    keys[rows, cols] = torch.rand(len(rows), generator=generator, device="cpu").to(f.device)
    r = min(RESERVOIR, B)
    new_keys, key_rows = torch.topk(keys.t(), r, dim=1, largest=False)
    all_keys = torch.cat([acc.sample_keys, new_keys], 1)
    all_values = torch.cat([acc.sample_values, f.t().gather(1, key_rows)], 1)
    all_tokens = torch.cat([acc.sample_tokens, torch.where(torch.isinf(new_keys), -1, token_ids[key_rows])], 1)
    keep = torch.topk(all_keys, RESERVOIR, dim=1, largest=False).indices
    acc.sample_keys, acc.sample_values, acc.sample_tokens = (
        all_keys.gather(1, keep),
        all_values.gather(1, keep),
        all_tokens.gather(1, keep),
    )
    labelled = token_labels >= 0
    if labelled.any():
        onehot = torch.nn.functional.one_hot(token_labels[labelled], acc.class_counts.shape[1]).float()
        acc.class_counts += (fired[labelled].float().t() @ onehot).long()


@dataclass(frozen=True)
class IndexResult(StageResult):
    summary: dict[str, Any]


def run(cfg: IndexConfig, ws: Workspace, report: Report, stop: threading.Event) -> IndexResult:
    """Index one SAE over an activation set (default: the set it was trained on) into features/<name>/."""
    with recording(STAGE, report, stop) as rec:
        # an index folder is never marked failed: a complete older index stays usable until the new one replaces it
        rec.mark_failed, rec.log_dir = False, ws.kind_dir("features")
        if not cfg.sae:
            raise StageError("no SAE run given; pass --sae RUN (see `vitsae-tui runs`)")
        sae_dir = ws.run_dir("saes", cfg.sae)
        meta = SAEMeta.load(sae_dir)
        set_name = cfg.activations or meta.activations
        store = ActivationSet(ws.run_dir("activations", set_name))
        if store.d_model != meta.d_in or store.hook != meta.hook:
            raise StageError(
                f"saes/{cfg.sae} reads {meta.hook} with d_model {meta.d_in}, but activations/{set_name} "
                f"holds {store.hook} with d_model {store.d_model}; pick a matching set"
            )
        name = index_name(cfg.sae, set_name, meta.activations)
        if not RUN_NAME.match(name):
            raise StageError(f"{name!r} cannot name an index; rename the SAE run or the set")
        rec.run_dir = rec.claim(ws.kind_dir("features") / name)
        rec.started(config_mod.to_dict(cfg))
        return _build(cfg, ws, sae_dir, store, rec, pick_device(cfg.device))


class _IndexPass:
    """The streaming pass over the set's images, which checkpoints itself to a hidden file beside the index: a
    stopped or killed index continues where it was."""

    def __init__(self, cfg: IndexConfig, sae_dir: Path, store: ActivationSet, sae, index_dir: Path, device):
        self.cfg, self.store, self.sae, self.device = cfg, store, sae, device
        labels = store.labels()
        self.labels = labels
        n_classes = len(store.class_names) or int(labels.max(initial=-1) + 1)
        self.acc = _Accumulators.empty(sae.d_sae, n_classes, device)
        self.generator = torch.Generator().manual_seed(0)
        self.path = index_dir.parent / f".{index_dir.name}.pass.pt"
        self.sae_sha256 = weights_sha256(sae_dir)
        self.identity = {
            "sae_sha256": self.sae_sha256,
            "activations": store.path.name,
            "n_images": store.n_images,
            "images_per_batch": cfg.images_per_batch,
        }
        remove_partial_writes(index_dir.parent, f"{self.path.name}.")  # a killed save of the pass file

    def resume(self) -> int:
        """The image to continue from (0: from the start) after loading a saved pass of this same SAE and set."""
        if not self.path.exists():
            return 0
        try:
            saved = load_torch_file(self.path)
            if any(saved.get(k) != v for k, v in self.identity.items()):
                return 0  # a pass of another SAE or set: start over
            for name, value in saved["acc"].items():
                if getattr(self.acc, name).shape != value.shape:
                    return 0
                setattr(self.acc, name, value.to(self.device))
            self.generator.set_state(saved["generator"])
            return int(saved["next_image"])
        except (WorkspaceError, KeyError, TypeError, AttributeError, RuntimeError):
            return 0  # a damaged pass is only lost work

    def save(self, next_image: int) -> None:
        accumulators = {k: v.cpu() for k, v in vars(self.acc).items()}
        state = {**self.identity, "next_image": next_image, "generator": self.generator.get_state()}
        atomic_torch_save(self.path, {**state, "acc": accumulators})

    @torch.no_grad()
    def run(self, start: int, rec: RunRecorder) -> int | None:
        """Fold every image from `start` on into the accumulators; the image it stopped at, or None when done."""
        store, cfg, T = self.store, self.cfg, self.store.tokens_per_image
        last_checkpoint = time.perf_counter()
        for first in range(start, store.n_images, cfg.images_per_batch):
            end = min(first + cfg.images_per_batch, store.n_images)
            rows = np.concatenate([store.image(i) for i in range(first, end)]).astype(np.float32)
            f = self.sae.encode_raw(torch.from_numpy(rows).to(self.device))  # (B * T, F)
            token_labels = torch.from_numpy(np.repeat(self.labels[first:end], T)).to(self.device)
            _accumulate(self.acc, f, first * T, token_labels, self.sae.firing_threshold, self.generator)
            rec.progress(end, store.n_images, "images")
            now = time.perf_counter()
            # a stop saves the pass even after its last batch: the class effects and concepts are still to come
            if rec.stop.is_set() or (end < store.n_images and now - last_checkpoint >= cfg.checkpoint_every_s):
                self.save(end)
                last_checkpoint = now
            if rec.stop.is_set():
                return end
        return None

    def arrays(self, class_effect: np.ndarray, causal_effect: np.ndarray | None) -> IndexArrays:
        acc = self.acc
        band_values, band_tokens = _bands(acc.sample_values.cpu().numpy(), acc.sample_tokens.cpu().numpy())
        return IndexArrays(
            density=(acc.fired.double() / self.store.n_tokens).cpu().numpy(),
            mean_activation=(acc.total / acc.fired.clamp_min(1)).cpu().numpy(),
            max_activation=acc.maximum.cpu().numpy(),
            activation_hist=acc.hist.cpu().numpy(),
            top_values=acc.top_values.cpu().numpy(),
            top_tokens=acc.top_tokens.cpu().numpy(),
            class_counts=acc.class_counts.cpu().numpy(),
            band_values=band_values,
            band_tokens=band_tokens,
            class_effect=class_effect,
            causal_effect=causal_effect,
        )


def _build(
    cfg: IndexConfig, ws: Workspace, sae_dir: Path, store: ActivationSet, rec: RunRecorder, device
) -> IndexResult:
    sae = load_sae(sae_dir, device)
    index_pass = _IndexPass(cfg, sae_dir, store, sae, rec.run_dir, device)
    start = index_pass.resume()
    if start:
        rec.log(f"continuing the index pass at image {start} of {store.n_images}")
    rec.log(
        f"indexing saes/{sae_dir.name} over activations/{store.path.name} on {device}: "
        f"{store.n_images} images, {sae.d_sae} features"
    )
    stopped_at = index_pass.run(start, rec)
    if stopped_at is not None:
        return _stopped(rec, f"at image {stopped_at} of {store.n_images}")
    try:
        check_stop(rec.stop)
        rec.log("computing class effects")
        top_tokens = index_pass.acc.top_tokens.cpu().numpy()
        class_effect, causal_effect, model_class_names = _model_effects(ws, store, sae, top_tokens, device, rec)
        arrays = index_pass.arrays(class_effect, causal_effect)
        concepts = None
        if store.has_concept_maps:
            rec.log("scoring ground-truth concept recovery on held-out images")
            concepts = _concepts(ws, store, sae_dir, sae, device, rec)
        check_stop(rec.stop)
    except StopRequested:
        index_pass.save(store.n_images)
        return _stopped(rec)
    meta = IndexMeta(
        sae_run=sae_dir.name,
        sae_sha256=index_pass.sae_sha256,
        activations=store.path.name,
        hook=store.hook,
        d_sae=sae.d_sae,
        top_k=TOP_K,
        hist_log2_edges=tuple(HIST_BINS.tolist()),
        class_names=tuple(store.class_names),
        model_class_names=model_class_names,
        summary=IndexSummary(
            features=sae.d_sae, alive=int((arrays.density > 0).sum()), tokens=store.n_tokens, **_concept_means(concepts)
        ),
        complete=True,
    )
    write_index(rec.run_dir, meta, arrays, concepts)
    index_pass.path.unlink(missing_ok=True)
    summary = {k: v for k, v in config_mod.to_dict(meta.summary).items() if v is not None}
    rec.artifact(rec.run_dir, "feature index")
    rec.finished(summary)
    return IndexResult(rec.run_dir, False, summary)


def _concept_means(report: ConceptReport | None) -> dict[str, Any]:
    if report is None or not report.concepts:
        return {"concepts": 0}
    scores = report.concepts

    def mean(get) -> float:
        return float(np.mean([get(c) for c in scores]))

    return {
        "concepts": len(scores),
        "matched": sum(c.matched for c in scores),
        "mean_sae_f1": mean(lambda c: c.sae.f1),
        "mean_neuron_f1": mean(lambda c: c.neurons.f1),
        "mean_probe_f1": mean(lambda c: c.probe.f1),
        "mean_baseline_f1": mean(lambda c: c.baseline.f1),
        "mean_sae_parent_mcc": mean(lambda c: c.sae.parent_mcc),
        "mean_neuron_parent_mcc": mean(lambda c: c.neurons.parent_mcc),
        "heldout_split": report.heldout_split,
    }


def _stopped(rec: RunRecorder, where: str = "after the pass") -> IndexResult:
    rec.log(f"stopped {where}; the same command continues from there (an earlier index stays as it was)", "warning")
    rec.finished({}, stopped=True, status=False)
    return IndexResult(rec.run_dir, True, {})


def _bands(
    values: np.ndarray, tokens: np.ndarray, n_bands: int = 4, per_band: int = 4
) -> tuple[np.ndarray, np.ndarray]:
    """From each feature's uniform reservoir of firings, `per_band` examples from each activation quantile band."""
    F = values.shape[0]
    out_v = np.zeros((F, n_bands, per_band), dtype=np.float32)
    out_t = np.full((F, n_bands, per_band), -1, dtype=np.int64)
    for i in range(F):
        valid = tokens[i] >= 0
        v, t = values[i][valid], tokens[i][valid]
        if len(v) == 0:
            continue
        order = np.argsort(-v, kind="stable")
        for band, chunk in enumerate(np.array_split(order, n_bands)):
            pick = (
                chunk[np.linspace(0, len(chunk) - 1, min(per_band, len(chunk))).round().astype(int)]
                if len(chunk)
                else []
            )
            out_v[i, band, : len(pick)] = v[pick]
            out_t[i, band, : len(pick)] = t[pick]
    return out_v, out_t


def _model_effects(
    ws, store: ActivationSet, sae, top_tokens: np.ndarray, device, rec: RunRecorder
) -> tuple[np.ndarray, np.ndarray | None, tuple[str, ...]]:
    """What each feature does to the model's class logits, and the model's class names (which need not be the set's):

    - the decoder-direction effect (F, C): the mean change of each logit when the feature's direction, at its mean
      firing strength, is added to every token at the hook, over a few images;
    - the causal effect (F, C): the mean change of each logit when the feature is zeroed on every patch of each of
      its top images (at most CAUSAL_IMAGES), the SAE spliced in with its error term.
    Zeros, None and the set's names when the model is unavailable.
    """
    F = sae.d_sae
    try:
        p = store.provenance
        loaded = model_run.load_model(ws, p.model_run, p.checkpoint, device, p.data)
    except WorkspaceError as e:
        rec.log(f"class effects skipped: {e}", "warning")
        return np.zeros((F, max(len(store.class_names), 1)), dtype=np.float32), None, tuple(store.class_names)
    model = loaded.model
    ids = np.linspace(0, store.n_images - 1, min(CLASS_EFFECT_IMAGES, store.n_images)).round().astype(int)
    acts = torch.from_numpy(np.stack([store.image(int(i)) for i in ids]).astype(np.float32)).to(device)  # (n, T, d)
    prefixes = store.prefixes(ids)  # the special tokens (CLS, registers) of a library model, unchanged by any edit
    prefix = torch.from_numpy(prefixes.astype(np.float32)).to(device) if prefixes is not None else None
    raw = sae.raw_weights()
    directions = raw["W_dec"].to(device)  # (F, d) in raw units
    with torch.no_grad():
        f = sae.encode_raw(acts.reshape(-1, acts.shape[-1]))
        strength = torch.where((f > 0).any(0), f.sum(0) / (f > 0).sum(0).clamp_min(1), sae.firing_threshold)  # (F,)
        base = model.run_from(store.hook, acts, prefix).float()  # (n, C)
        effects = torch.zeros(F, base.shape[1], device=device)
        per_batch = max(1, 2048 // len(ids))
        progress = rec.sub_progress("features (class effects)")
        for start in range(0, F, per_batch):
            check_stop(rec.stop)
            progress(start, F)
            chunk = torch.arange(start, min(start + per_batch, F), device=device)
            shifted = acts[None] + (strength[chunk, None] * directions[chunk])[:, None, None, :]  # (c, n, T, d)
            logits = model.run_from(
                store.hook,
                shifted.reshape(-1, *acts.shape[1:]),
                None if prefix is None else prefix.repeat(len(chunk), 1, 1),
            ).float()
            effects[chunk] = (logits.reshape(len(chunk), len(ids), -1) - base[None]).mean(1)
    rec.log("zeroing each feature on its top images")
    progress = rec.sub_progress("images (zeroing features)")
    causal = _causal_effects(model, store, sae, directions, top_tokens, base.shape[1], device, progress, rec.stop)
    return effects.cpu().numpy(), causal, tuple(loaded.class_names)


def _causal_effects(
    model,
    store: ActivationSet,
    sae,
    directions,
    top_tokens: np.ndarray,
    n_classes: int,
    device,
    progress: Callable[[int, int], None],
    stop: threading.Event,
):
    """(F, C) mean change of each class logit when a feature is zeroed on every patch of its top images.

    With the error term kept, the spliced activation is x itself, so zeroing feature j is x - f_j ⊗ W_dec[j].
    """
    T = store.tokens_per_image
    top_images = {}
    for feature, tokens in enumerate(top_tokens):
        images = list(dict.fromkeys(int(t) // T for t in tokens if t >= 0))[:CAUSAL_IMAGES]
        for image in images:
            top_images.setdefault(image, []).append(feature)
    total = torch.zeros(len(top_tokens), n_classes, dtype=torch.float64, device=device)
    count = torch.zeros(len(top_tokens), dtype=torch.float64, device=device)
    with torch.no_grad():
        for done, image in enumerate(sorted(top_images)):
            check_stop(stop)
            progress(done, len(top_images))
            x = torch.from_numpy(store.image(image).astype(np.float32)).to(device)  # (T, d)
            prefix = store.prefix(image)
            prefix = torch.from_numpy(prefix.astype(np.float32)).to(device)[None] if prefix is not None else None
            f = sae.encode_raw(x)
            clean = model.run_from(store.hook, x[None], prefix).float()[0]
            features = top_images[image]
            for start in range(0, len(features), 256):
                chunk = torch.as_tensor(features[start : start + 256], device=device)
                zeroed = x[None] - f[:, chunk].t()[:, :, None] * directions[chunk][:, None, :]  # (c, T, d)
                total[chunk] += (model.run_from(store.hook, zeroed, prefix).float() - clean).double()
                count[chunk] += 1
    return (total / count.clamp_min(1)[:, None]).float().cpu().numpy()


def _token_concepts(concept_maps: np.ndarray) -> np.ndarray:
    """(N, C, g, g) per-image maps -> (N * g * g, C) per-token rows, in token order."""
    n, c = concept_maps.shape[:2]
    return concept_maps.reshape(n, c, -1).transpose(0, 2, 1).reshape(-1, c)


def _sample(ids: np.ndarray, tokens_per_image: int) -> np.ndarray:
    n = min(len(ids), max(1, CONCEPT_TOKENS // tokens_per_image))
    return ids[np.linspace(0, len(ids) - 1, n).round().astype(int)]


def _encoded(
    store: ActivationSet, concept_maps: np.ndarray, ids: np.ndarray, sae, device
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Raw activations, feature activations and concepts of every patch of the given images."""
    x = np.concatenate([store.image(int(i)) for i in ids]).astype(np.float32)
    with torch.no_grad():
        f = torch.cat([sae.encode_raw(torch.from_numpy(x[i : i + 8192]).to(device)) for i in range(0, len(x), 8192)])
    return x, f.cpu().numpy(), _token_concepts(concept_maps[ids])


def _heldout_every(ws: Workspace, sae_dir: Path) -> int:
    """The SAE's held-out image spacing (the default for an SAE saved without a training config)."""
    try:
        return sae_run.read_config(ws, sae_dir.name).heldout_every
    except UserError:
        return SAETrainConfig.heldout_every


def _concepts(
    ws: Workspace, store: ActivationSet, sae_dir: Path, sae, device, rec: RunRecorder
) -> ConceptReport | None:
    """Concept recovery selected on the set's images and scored on held-out ones: the model's validation images
    when they were collected with concept maps, else the images the SAE was held out from."""
    if not store.has_concept_maps:
        return None
    T = store.tokens_per_image
    validation_name = find_validation_set(ws.kind_dir("activations"), store.provenance)
    validation = ActivationSet(ws.run_dir("activations", validation_name)) if validation_name else None
    usable = validation is not None and validation.concept_names == store.concept_names
    if usable and validation.has_concept_maps:
        train_ids, test_store, split = np.arange(store.n_images), validation, "val"
        test_ids = np.arange(validation.n_images)
    else:
        every = _heldout_every(ws, sae_dir)
        test_ids = heldout_images(store.n_images, every)
        train_ids = np.setdiff1d(np.arange(store.n_images), test_ids)
        test_store, split = store, "train-heldout"
        rec.log(
            f"no validation split with concept maps is collected: scoring concepts on every {every}th image of "
            "the set (the SAE never trained on them)",
            "warning",
        )
    if not len(train_ids) or not len(test_ids):
        return None
    train_ids, test_ids = _sample(train_ids, T), _sample(test_ids, T)
    maps = store.concept_maps()  # read once: a large set's maps are hundreds of megabytes
    test_maps = maps if test_store is store else test_store.concept_maps()
    x_test, f_test, y_test = _encoded(test_store, test_maps, test_ids, sae, device)
    image_of_token = np.repeat(test_ids, T)
    return concept_recovery(
        _encoded(store, maps, train_ids, sae, device),
        (x_test, f_test, y_test, image_of_token),
        store.concept_names,
        split,
        len(train_ids),
        rec.sub_progress("concepts scored"),
        rec.stop,
    )
