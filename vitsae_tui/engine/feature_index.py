"""A feature index (`features/<name>/`): index.json, concepts.json, labels.json and one .npy per statistic.

Readers (the browser, the CLI, the PNG cards) use its typed accessors: `FeatureIndex.summary(feature)` says
everything about one feature, `image_info(image)` about one image, `top_features(image, token)` about one patch.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vitsae_tui.engine import config as config_mod
from vitsae_tui.engine.activation_set import ActivationSet, ImageEntry
from vitsae_tui.engine.concepts import MATCH_F1, MATCH_PARENT_MCC, ConceptReport, ConceptScore
from vitsae_tui.engine.errors import OutOfRange, StageError
from vitsae_tui.engine.saes.run import SAEMeta, load_sae
from vitsae_tui.engine.text import shown
from vitsae_tui.engine.workspace import Workspace, atomic_save_npy, atomic_write_json, read_json, workspace_args

INDEX_VERSION = 2  # 2: concepts selected on train images and scored on held-out ones
INDEX_FILE = "index.json"
CONCEPTS_FILE = "concepts.json"
MATCH_BAR = f"held-out F1 >= {MATCH_F1} and within-parent MCC >= {MATCH_PARENT_MCC}"
MAX_LABEL_CHARS, MAX_NOTE_CHARS = 80, 2000


@dataclass(frozen=True)
class IndexSummary:
    features: int
    alive: int
    tokens: int
    concepts: int
    """concepts scored on held-out images (means below are over them)"""
    matched: int = 0
    """concepts whose SAE feature clears the bar (held-out F1 and within-parent MCC)"""
    mean_sae_f1: float | None = None
    mean_neuron_f1: float | None = None
    mean_probe_f1: float | None = None
    mean_baseline_f1: float | None = None
    """the concept-blind "patch is on an object" indicator"""
    mean_sae_parent_mcc: float | None = None
    mean_neuron_parent_mcc: float | None = None
    heldout_split: str = ""


@dataclass(frozen=True)
class IndexMeta:
    sae_run: str
    sae_sha256: str
    activations: str
    hook: str
    d_sae: int
    top_k: int
    hist_log2_edges: tuple[float, ...]
    class_names: tuple[str, ...]
    """the set's classes: its labels, class counts and image captions"""
    summary: IndexSummary
    complete: bool
    version: int = INDEX_VERSION
    model_class_names: tuple[str, ...] = ()
    """the model's classes, which the class effects change (empty in indexes written before: the set's)"""


@dataclass(frozen=True)
class IndexArrays:
    """Per-feature statistics of the streaming pass; F = d_sae, k = top_k, C = classes."""

    density: np.ndarray  # (F,) fraction of tokens that fire
    mean_activation: np.ndarray  # (F,) over firing tokens
    max_activation: np.ndarray  # (F,)
    activation_hist: np.ndarray  # (F, bins) counts of log2(activation / threshold)
    top_values: np.ndarray  # (F, k)
    top_tokens: np.ndarray  # (F, k) token ids, -1 when empty
    class_counts: np.ndarray  # (F, C) firing tokens per class
    band_values: np.ndarray  # (F, bands, per_band)
    band_tokens: np.ndarray  # (F, bands, per_band)
    class_effect: np.ndarray  # (F, C) mean change of each class logit when the feature's direction is added
    causal_effect: np.ndarray | None = None
    """(F, C) mean change of each class logit when the feature is zeroed on its top images (None: older index)"""


@dataclass(frozen=True)
class FeatureSummary:
    """Everything the browser, the CLI and the PNG card say about one feature."""

    feature: int
    label: str
    density: float
    max_activation: float
    mean_activation: float
    activation_hist: np.ndarray
    promoted: list[tuple[str, float]]
    suppressed: list[tuple[str, float]]
    causal: list[tuple[str, float]]
    """the classes whose logits zeroing the feature on its top images moves most (empty: an older index)"""
    fires_on: list[tuple[str, float]]
    concepts: list[ConceptScore]
    top_k: int

    @property
    def title(self) -> str:
        return f"feature {self.feature}" + (f" - {self.label}" if self.label else "")

    def stats_line(self, separator: str = " · ", digits: int = 3) -> str:
        return separator.join(
            (
                f"density {self.density:.2e}",
                f"max {self.max_activation:.{digits}g}",
                f"mean {self.mean_activation:.{digits}g}",
            )
        )

    def effect_line(self, separator: str = " · ", digits: int = 2) -> str:
        promotes = ", ".join(f"{name} {value:+.{digits}f}" for name, value in self.promoted)
        suppresses = ", ".join(f"{name} {value:+.{digits}f}" for name, value in self.suppressed)
        return f"promotes {promotes}{separator}suppresses {suppresses}"

    def causal_line(self, digits: int = 2) -> str:
        if not self.causal:
            return ""
        moved = ", ".join(f"{name} {value:+.{digits}f}" for name, value in self.causal)
        return f"zeroed on its top images: {moved}"

    def fires_on_line(self, n: int = 3) -> str:
        if not self.fires_on:
            return ""
        return "fires on " + ", ".join(f"{name} {share:.0%}" for name, share in self.fires_on[:n])

    def concept_parts(self, digits: int = 2, below_bar: bool = False) -> list[list[str]]:
        """The concepts this feature was chosen for, each as the parts of its line (most telling first): the matches
        (past the bar), and with `below_bar` the others too, said to be below it."""
        parts = []
        for c in sorted(self.concepts, key=lambda c: -c.sae.f1):
            if not (c.matched or below_bar):
                continue
            verdict = "matches" if c.matched else "below the bar for"
            parts.append(
                [
                    f"{verdict} {shown(c.concept)} {c.sae.line(digits)} on held-out images",
                    f"neuron F1 {c.neurons.f1:.{digits}f}",
                    f"object baseline {c.baseline.f1:.{digits}f}",
                ]
            )
        return parts

    def concept_lines(self, digits: int = 2, below_bar: bool = False) -> list[str]:
        return [f"{first} ({', '.join(rest)})" for first, *rest in self.concept_parts(digits, below_bar)]


@dataclass(frozen=True)
class ImageInfo:
    image: int
    class_name: str
    source: str


def index_name(sae_run: str, activations: str, trained_on: str) -> str:
    name = sae_run if activations == trained_on else f"{sae_run}.{activations}"
    return name[:64]


def write_index(index_dir: Path, meta: IndexMeta, arrays: IndexArrays, concepts: ConceptReport | None) -> None:
    """Write into a temporary folder and rename it into place: a killed run never leaves an index that looks whole;
    a researcher's labels survive re-indexing."""
    tmp = index_dir.parent / f".{index_dir.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for field in dataclasses.fields(IndexArrays):
        if getattr(arrays, field.name) is not None:
            atomic_save_npy(tmp / f"{field.name}.npy", getattr(arrays, field.name))
    if concepts is not None:
        atomic_write_json(tmp / CONCEPTS_FILE, config_mod.to_dict(concepts))
    atomic_write_json(tmp / INDEX_FILE, config_mod.to_dict(meta))
    labels_path = index_dir / "labels.json"
    if labels_path.exists():
        shutil.copy2(labels_path, tmp / "labels.json")
    old = index_dir.parent / f".{index_dir.name}.old"
    shutil.rmtree(old, ignore_errors=True)
    if index_dir.exists():
        os.replace(index_dir, old)
    os.replace(tmp, index_dir)
    shutil.rmtree(old, ignore_errors=True)


def rebuild_advice(index_dir: Path) -> str:
    """'run `vitsae-tui index --sae RUN` again', ready to paste (an index is named after its SAE run)."""
    sae = index_dir.name.split(".")[0]
    return f"run `{shlex.join(['vitsae-tui', 'index', *workspace_args(index_dir.parent.parent), '--sae', sae])}` again"


def read_meta(index_dir: Path) -> IndexMeta:
    """The validated index.json of a complete index; StageError or ConfigError naming the problem."""
    where = f"features/{index_dir.name}/index.json"
    if not (index_dir / INDEX_FILE).is_file():
        raise StageError(f"features/{index_dir.name} is not a complete index; {rebuild_advice(index_dir)}")
    meta = config_mod.from_dict(IndexMeta, read_json(index_dir / INDEX_FILE), where)
    if meta.version != INDEX_VERSION or not meta.complete:
        raise StageError(f"features/{index_dir.name} is not a complete index; {rebuild_advice(index_dir)}")
    return meta


class FeatureIndex:
    """Read access to a built index, labels, and per-image SAE activations (one encode of 36 tokens)."""

    def __init__(self, ws: Workspace, name: str, device: str = "cpu"):
        self.dir = ws.run_dir("features", name)
        try:
            self.meta = read_meta(self.dir)
        except config_mod.ConfigError as e:
            raise StageError(f"{e} ({rebuild_advice(self.dir)})") from None
        self.store = ActivationSet(ws.run_dir("activations", self.meta.activations))
        sae_dir = ws.run_dir("saes", self.meta.sae_run)
        self.sae = load_sae(sae_dir, device)
        if self.sae.d_in != self.store.d_model:
            raise StageError(
                f"saes/{sae_dir.name} reads vectors of width {self.sae.d_in} but activations/{self.store.path.name} "
                f"holds width {self.store.d_model}; {rebuild_advice(self.dir)} on a matching set"
            )
        if self.sae.d_sae != self.meta.d_sae:
            raise StageError(
                f"features/{name} indexes {self.meta.d_sae} features but saes/{sae_dir.name} has "
                f"{self.sae.d_sae}; {rebuild_advice(self.dir)}"
            )
        loaded = {}
        for f in dataclasses.fields(IndexArrays):
            path = self.dir / f"{f.name}.npy"
            if f.default is None and not path.exists():  # an array added after this index was built
                continue
            try:
                loaded[f.name] = np.load(path, allow_pickle=False)
            except (OSError, ValueError, EOFError):
                raise StageError(
                    f"features/{name}/{path.name} is missing or damaged; {rebuild_advice(self.dir)}"
                ) from None
        self.arrays = IndexArrays(**loaded)
        if any(len(array) != self.meta.d_sae for array in loaded.values()):
            raise StageError(f"features/{name} has arrays of the wrong length; {rebuild_advice(self.dir)}")
        self.concept_report: ConceptReport | None = None
        if (self.dir / CONCEPTS_FILE).exists():
            where = f"features/{name}/{CONCEPTS_FILE}"
            try:
                self.concept_report = config_mod.from_dict(ConceptReport, read_json(self.dir / CONCEPTS_FILE), where)
            except config_mod.ConfigError as e:
                raise StageError(f"{e} ({rebuild_advice(self.dir)})") from None
        self.concepts = self.concept_report.concepts if self.concept_report is not None else []
        self.matched_concepts: dict[int, list[ConceptScore]] = {}
        for c in self.concepts:
            self.matched_concepts.setdefault(c.feature, []).append(c)
        self.labels = self._read_labels()
        self._cache: dict[int, np.ndarray] = {}

    def _read_labels(self) -> dict[str, dict[str, str]]:
        path = self.dir / "labels.json"
        raw = read_json(path) if path.exists() else {}
        if not isinstance(raw, dict):
            return {}
        labels = {}
        for key, entry in raw.items():  # a hand-edited file keeps its valid entries
            if key.isdigit() and 0 <= int(key) < self.d_sae and isinstance(entry, dict):
                name, note = entry.get("name", ""), entry.get("note", "")
                if isinstance(name, str) and isinstance(note, str):
                    labels[key] = {"name": name[:MAX_LABEL_CHARS], "note": note[:MAX_NOTE_CHARS]}
        return labels

    @property
    def name(self) -> str:
        return self.dir.name

    @property
    def d_sae(self) -> int:
        return self.meta.d_sae

    @property
    def grid(self) -> int:
        """Patches per side of an image."""
        return self.store.grid

    @property
    def n_images(self) -> int:
        return self.store.n_images

    @property
    def class_names(self) -> list[str]:
        return self.store.class_names

    def thumbnail(self, image: int) -> np.ndarray:
        return self.store.thumbnail(image)

    def image_labels(self) -> np.ndarray:
        """(n_images,) class index of every image (-1: unlabelled)."""
        return self.store.labels()

    def image_info(self, image: int) -> ImageInfo:
        entry: ImageEntry = self.store.image_entry(image)
        named = 0 <= entry.label < len(self.store.class_names)
        return ImageInfo(image, self.label_name(entry.label) if named else "unlabelled", shown(entry.source))

    def image_acts(self, image: int) -> np.ndarray:
        """(tokens, d_sae) SAE activations of one image, cached."""
        if image not in self._cache:
            if len(self._cache) > 256:
                self._cache.pop(next(iter(self._cache)))
            import torch

            with torch.no_grad():
                x = torch.from_numpy(self.store.image(image).astype(np.float32))
                self._cache[image] = self.sae.encode_raw(x).numpy()
        return self._cache[image]

    def top_features(self, image: int, token: int, n: int = 10) -> list[tuple[int, float]]:
        acts = self.image_acts(image)[token]
        order = np.argsort(-acts, kind="stable")[:n]
        return [(int(j), float(acts[j])) for j in order if acts[j] > 0]

    def heatmap(self, image: int, feature: int) -> np.ndarray:
        """(grid, grid) activations of one feature over one image's patches."""
        return self.image_acts(image)[:, feature].reshape(self.grid, self.grid)

    def density(self, feature: int) -> float:
        return float(self.arrays.density[feature])

    def heat_scale(self, feature: int) -> float | None:
        """The activation a heatmap's full colour stands for: the feature's maximum (None: it never fired)."""
        return float(self.arrays.max_activation[feature]) or None

    def best_concept(self, feature: int) -> ConceptScore | None:
        """The concept this feature matches best on held-out images, if any clears the bar."""
        matched = [c for c in self.matched_concepts.get(feature, []) if c.matched]
        return max(matched, key=lambda c: c.sae.f1, default=None)

    def top_examples(self, feature: int) -> list[tuple[int, int, float]]:
        """(image, token, value) of the feature's top-k, strongest first."""
        T = self.store.tokens_per_image
        return [
            (int(t) // T, int(t) % T, float(v))
            for v, t in zip(self.arrays.top_values[feature], self.arrays.top_tokens[feature])
            if t >= 0
        ]

    def band_examples(self, feature: int) -> list[list[tuple[int, int, float]]]:
        T = self.store.tokens_per_image
        return [
            [(int(t) // T, int(t) % T, float(v)) for v, t in zip(vs, ts) if t >= 0]
            for vs, ts in zip(self.arrays.band_values[feature], self.arrays.band_tokens[feature])
        ]

    def label(self, feature: int) -> str:
        """The researcher's name for a feature, safe to show ("" when unnamed)."""
        return shown(self.labels.get(str(feature), {}).get("name", ""))

    def label_name(self, label: int) -> str:
        """A class index's name, safe to show: it comes from a folder name."""
        names = self.store.class_names
        return shown(names[label]) if 0 <= label < len(names) else str(label)

    def set_label(self, feature: int, name: str, note: str = "") -> None:
        if not 0 <= feature < self.d_sae:
            raise StageError(f"feature {feature} is outside 0..{self.d_sae - 1}")
        if name.strip() or note.strip():
            self.labels[str(feature)] = {"name": name.strip()[:MAX_LABEL_CHARS], "note": note.strip()[:MAX_NOTE_CHARS]}
        else:
            self.labels.pop(str(feature), None)
        atomic_write_json(self.dir / "labels.json", self.labels)

    def class_effect(self, feature: int, n: int = 3) -> tuple[list[tuple[str, float]], list[tuple[str, float]]]:
        effect = self.arrays.class_effect[feature]
        order = np.argsort(-effect, kind="stable")
        names = self.meta.model_class_names

        def name(i: int) -> str:  # a logit of the model: named by the model's classes
            return shown(names[i]) if names and 0 <= i < len(names) else self.label_name(i)

        promoted = [(name(int(i)), float(effect[i])) for i in order[:n]]
        suppressed = [(name(int(i)), float(effect[i])) for i in order[::-1][:n]]
        return promoted, suppressed

    def causal_effect(self, feature: int, n: int = 3) -> list[tuple[str, float]]:
        """The n classes whose logits zeroing the feature on its top images moves most, largest change first."""
        if self.arrays.causal_effect is None:
            return []
        effect = self.arrays.causal_effect[feature]
        names = self.meta.model_class_names
        order = np.argsort(-np.abs(effect), kind="stable")[:n]
        return [
            (shown(names[i]) if names and i < len(names) else self.label_name(int(i)), float(effect[i])) for i in order
        ]

    def class_distribution(self, feature: int) -> list[tuple[str, float]]:
        counts = self.arrays.class_counts[feature].astype(np.float64)
        total = counts.sum()
        if total == 0:
            return []
        order = np.argsort(-counts, kind="stable")
        return [(self.label_name(int(i)), float(counts[i] / total)) for i in order if counts[i] > 0]

    def summary(self, feature: int, n_effects: int = 3) -> FeatureSummary:
        if not 0 <= feature < self.d_sae:
            raise OutOfRange(f"feature {feature} is outside 0..{self.d_sae - 1}")
        promoted, suppressed = self.class_effect(feature, n_effects)
        a = self.arrays
        return FeatureSummary(
            feature=feature,
            label=self.label(feature),
            density=float(a.density[feature]),
            max_activation=float(a.max_activation[feature]),
            mean_activation=float(a.mean_activation[feature]),
            activation_hist=a.activation_hist[feature],
            promoted=promoted,
            suppressed=suppressed,
            causal=self.causal_effect(feature, n_effects),
            fires_on=self.class_distribution(feature),
            concepts=self.matched_concepts.get(feature, []),
            top_k=self.meta.top_k,
        )


def index_exists(ws: Workspace, sae_run: str) -> bool:
    """Whether the SAE has been indexed over the set it was trained on."""
    return (ws.kind_dir("features") / index_name(sae_run, "", "") / INDEX_FILE).is_file()


def open_index_for(ws: Workspace, sae_run: str, activations: str | None = None) -> FeatureIndex:
    """The index of an SAE over a set (default: its training set), or a one-sentence error saying how to build it."""
    meta = SAEMeta.load(ws.run_dir("saes", sae_run))
    name = index_name(sae_run, activations or meta.activations, meta.activations)
    if not (ws.kind_dir("features") / name / INDEX_FILE).exists():
        command = shlex.join(["vitsae-tui", "index", *ws.cli_args, "--sae", sae_run])
        raise StageError(f"saes/{sae_run} has no feature index yet; run `{command}` first")
    return FeatureIndex(ws, name)
