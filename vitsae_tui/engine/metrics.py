"""Metric rows and the catalogue of metrics.

A stage writes its rows (a training window, a validation epoch, an SAE's held-out evaluation) to its run's
`metrics.jsonl` through `append_row`, and every reader gets them back through `read_rows` or `parse_row` as frozen,
typed rows: a metrics file is untrusted, so a value of the wrong type reads as missing, never as a crash.

`CATALOGUE` says what each metric is called, how it is formatted and where it is shown: the CLI's progress lines and
tables, the stage screens and their plots, the Compare screen and table, and the summaries of a finished run all read
it. Adding a metric to `compare` is one entry here (its `compare` group) and the code that measures it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

from vitsae_tui.engine.workspace import append_jsonl, read_jsonl, truncate_jsonl

METRICS_FILE = "metrics.jsonl"
MAX_INT = 2**63


@dataclass(frozen=True)
class Metric:
    key: str
    """its name in metrics.jsonl, status.json and a row's attribute"""
    label: str
    """short, for a column, a plot title or a progress line ('FVU')"""
    style: str = "number"
    """number, percent, count, duration, bytes or text"""
    digits: str = ".4g"
    """the format spec of a number"""
    title: str = ""
    """in words, for a summary line ('best validation loss'); the label when empty"""
    log_axis: bool = False
    """plotted on a log axis"""
    compare: str = ""
    """the Compare table it is a column of: 'reconstruction', 'spliced' or none"""
    column: int = 0
    """its place among that table's columns"""
    on_screen: bool = False
    """also a column of the Compare screen's narrower table"""

    @property
    def words(self) -> str:
        return self.title or self.label


# what a classifier's training writes
STEP = Metric("step", "step", "count")
EPOCH = Metric("epoch", "epoch", digits=".2f")
TRAIN_LOSS = Metric("train_loss", "loss", digits=".4f", title="training loss")
TRAIN_ACCURACY = Metric("train_accuracy", "acc", "percent", title="training accuracy")
LR = Metric("lr", "lr", digits=".3g", title="learning rate")
VAL_LOSS = Metric("val_loss", "val loss", digits=".4f", title="validation loss")
VAL_ACCURACY = Metric("val_accuracy", "val acc", "percent", title="validation accuracy")
VAL_IMAGES = Metric("val_images", "val images", "count", title="validation images")
BEST_VAL_LOSS = Metric("best_val_loss", "best val loss", digits=".4g", title="best validation loss")
BEST_VAL_ACCURACY = Metric("best_val_accuracy", "best val acc", "percent", title="best validation accuracy")
EPOCHS_DONE = Metric("epochs_done", "epochs", "count", title="epochs done")

# what an SAE's training writes, per logging window
RUN = Metric("run", "run", "text")
TOKENS = Metric("tokens", "tokens", "count")
MSE = Metric("mse", "MSE", log_axis=True)
FVU = Metric("fvu", "FVU", digits=".4f", log_axis=True)
L0 = Metric("l0", "L0", digits=".1f")
DEAD_FRACTION = Metric("dead_fraction", "dead", "percent", title="dead features", compare="reconstruction", column=5)
TOKENS_PER_S = Metric("tokens_per_s", "tok/s", digits=",.0f", title="tokens per second")
IN_WINDOW = Metric("in_window", "in window", title="pairs in the threshold window")
THETA_REACHED = Metric("theta_reached", "θ reached", title="features in reach of their threshold")
L0_COEFF = Metric("l0_coeff", "λ", digits=".3g", title="sparsity coefficient λ")

# an SAE's held-out evaluation: reconstruction, then the classifier with the SAE spliced in
EVAL_SPLIT = Metric("eval_split", "split", "text", title="evaluated on")
EVAL_IMAGES = Metric("eval_images", "images", "count", title="evaluation images")
EVAL_TOKENS = Metric("eval_tokens", "tokens", "count", title="evaluation tokens")
EVAL_L0 = Metric("eval_l0", "L0", digits=".3g", title="held-out L0", compare="reconstruction", column=1, on_screen=True)
EVAL_FVU = Metric(
    "eval_fvu",
    "FVU",
    digits=".3g",
    title="held-out FVU",
    log_axis=True,
    compare="reconstruction",
    column=2,
    on_screen=True,
)
EVAL_MSE = Metric("eval_mse", "MSE", title="held-out MSE")
EVAL_EXPLAINED_VARIANCE = Metric(
    "eval_explained_variance", "EV", digits=".3g", title="explained variance", compare="reconstruction", column=3
)
EVAL_L2_RATIO = Metric("eval_l2_ratio", "L2", digits=".3g", title="mean ‖x̂‖/‖x‖", compare="reconstruction", column=4)
EVAL_NEVER_FIRED = Metric("eval_never_fired_fraction", "never fired", "percent", title="features that never fired")
EVAL_DENSE_FRACTION = Metric(
    "eval_dense_fraction", "dense", "percent", title="dense features (>10%)", compare="reconstruction", column=6
)
EVAL_DECODER_MAX_COSINE = Metric(
    "eval_decoder_max_cosine", "cos", digits=".3g", title="mean max decoder cosine", compare="reconstruction", column=7
)
EVAL_DELTA_CE = Metric("eval_delta_ce", "ΔCE", digits=".4f", title="ΔCE spliced in", compare="spliced", column=1)
EVAL_KL = Metric("eval_kl", "KL", digits=".4f", title="KL spliced in", compare="spliced", column=2)
KL_RECOVERED = Metric(
    "kl_recovered", "KLrec", digits=".3f", title="KL recovered", compare="spliced", column=3, on_screen=True
)
EVAL_TOP1_AGREEMENT = Metric(
    "eval_top1_agreement", "agree", "percent", title="top-1 agreement", compare="spliced", column=4
)
ACC_SAE = Metric("acc_sae", "acc", "percent", title="accuracy spliced in", compare="spliced", column=5)
ACC_WORST_CLASS_SAE = Metric(
    "acc_worst_class_sae",
    "worst",
    "percent",
    title="worst class accuracy spliced in",
    compare="spliced",
    column=6,
    on_screen=True,
)
CE_RECOVERED = Metric("ce_recovered", "CErec", digits=".3f", title="CE recovered", compare="spliced", column=7)
CE_CLEAN = Metric("ce_clean", "CE clean", digits=".4f", title="clean cross-entropy")
CE_SAE = Metric("ce_sae", "CE spliced", digits=".4f", title="cross-entropy spliced in")
ACC_CLEAN = Metric("acc_clean", "acc clean", "percent", title="clean accuracy")
ACC_WORST_CLASS_CLEAN = Metric("acc_worst_class_clean", "worst clean", "percent", title="worst class clean accuracy")
ACC_WORST_CLASS = Metric("acc_worst_class", "worst class", "count", title="worst class")
CE_ABLATED = Metric("ce_ablated", "CE ablated", digits=".4f", title="cross-entropy mean-ablated")
ACC_ABLATED = Metric("acc_ablated", "acc ablated", "percent", title="accuracy mean-ablated")
ACC_RECOVERED = Metric("acc_recovered", "acc rec", digits=".3f", title="accuracy recovered")

# what a stage's summary adds
ELAPSED_S = Metric("elapsed_s", "time", "duration")
SKIPPED_IMAGES = Metric("skipped_images", "skipped", "count", title="skipped images")
IMAGES = Metric("images", "images", "count")
SHARDS = Metric("shards", "shards", "count")
D_MODEL = Metric("d_model", "width", "count")
DTYPE = Metric("dtype", "dtype", "text")
BYTES_ON_DISK = Metric("bytes_on_disk", "size", "bytes", title="size on disk")
IMPORTED_FROM = Metric("imported_from", "imported from", "text")
PARAMETERS = Metric("parameters", "parameters", "count")
N_CLASSES = Metric("n_classes", "classes", "count")
HOOKS = Metric("hooks", "hook points", "count")
PROBE_VAL_ACCURACY = Metric("probe_val_accuracy", "probe acc", "percent", title="linear probe validation accuracy")

CATALOGUE: dict[str, Metric] = {m.key: m for m in list(globals().values()) if isinstance(m, Metric)}
"""every metric by key"""

COMPARE_RECONSTRUCTION = tuple(
    sorted((m for m in CATALOGUE.values() if m.compare == "reconstruction"), key=lambda m: m.column)
)
COMPARE_SPLICED = tuple(sorted((m for m in CATALOGUE.values() if m.compare == "spliced"), key=lambda m: m.column))
COMPARE_SCREEN = tuple(m for m in (*COMPARE_RECONSTRUCTION, *COMPARE_SPLICED) if m.on_screen)
PROGRESS_LINE = (MSE, FVU, L0, DEAD_FRACTION, TOKENS_PER_S, TRAIN_LOSS, TRAIN_ACCURACY, VAL_LOSS, VAL_ACCURACY)
"""what a running stage's status line shows of its latest rows"""
SAE_SUMMARY = (MSE, FVU, L0, DEAD_FRACTION)
"""the training window's metrics an SAE's summary keeps (with its architecture's own)"""


def metric(key: str) -> Metric:
    """The catalogue's entry, or a plain number named by its key for one the catalogue does not know."""
    return CATALOGUE.get(key) or Metric(key, key.replace("_", " "))


@dataclass(frozen=True)
class Histogram:
    """Counts of features per log10 bin (an evaluation's density or threshold histogram)."""

    log10_edges: tuple[float, ...]
    counts: tuple[int, ...]
    never_fired: int | None = None
    median: float | None = None


@dataclass(frozen=True)
class ModelStep:
    kind: ClassVar[str] = "step"
    step: int
    epoch: float
    train_loss: float
    train_accuracy: float
    lr: float


@dataclass(frozen=True)
class ModelEpoch:
    kind: ClassVar[str] = "epoch"
    step: int
    epoch: int
    val_loss: float
    val_accuracy: float
    val_images: int | None


@dataclass(frozen=True)
class SAEStep:
    kind: ClassVar[str] = "step"
    run: str
    step: int
    tokens: int | None
    mse: float
    fvu: float
    l0: float
    dead_fraction: float
    lr: float
    tokens_per_s: float
    arch: Mapping[str, float] = field(default_factory=dict)
    """the architecture's own entries (JumpReLU: in_window, theta_reached, l0_coeff), flat in the file"""


@dataclass(frozen=True)
class SAEEval:
    kind: ClassVar[str] = "eval"
    run: str
    step: int
    eval_split: str
    eval_images: int | None
    eval_tokens: int | None
    eval_fvu: float
    eval_mse: float
    eval_l0: float
    eval_never_fired_fraction: float
    eval_dense_fraction: float
    eval_explained_variance: float
    eval_l2_ratio: float
    eval_decoder_max_cosine: float
    density: Histogram | None = None
    theta: Histogram | None = None
    # the classifier with the SAE spliced in: None when the model could not be loaded
    eval_delta_ce: float | None = None
    eval_kl: float | None = None
    eval_top1_agreement: float | None = None
    ce_clean: float | None = None
    ce_sae: float | None = None
    acc_clean: float | None = None
    acc_sae: float | None = None
    acc_worst_class_sae: float | None = None
    acc_worst_class_clean: float | None = None
    acc_worst_class: int | None = None
    ce_ablated: float | None = None
    acc_ablated: float | None = None
    ce_recovered: float | None = None
    acc_recovered: float | None = None
    kl_recovered: float | None = None

    @property
    def spliced(self) -> bool:
        """Whether the classifier was measured with the SAE spliced in."""
        return self.eval_kl is not None


Row = ModelStep | ModelEpoch | SAEStep | SAEEval
ROW_TYPES: dict[tuple[str, str], type] = {
    ("train-model", "step"): ModelStep,
    ("train-model", "epoch"): ModelEpoch,
    ("train-sae", "step"): SAEStep,
    ("train-sae", "eval"): SAEEval,
}
"""the row types of each stage's metrics.jsonl, by (stage, kind)"""


def values(row: Row) -> dict[str, float]:
    """The row's finite numbers by metric key (an SAE step's architecture entries included)."""
    found: dict[str, float] = {}
    for f in fields(row):
        value = getattr(row, f.name)
        if f.name == "arch":
            found.update({k: v for k, v in value.items() if _is_number(v) and math.isfinite(v)})
        elif _is_number(value) and math.isfinite(value):
            found[f.name] = value
    return found


def to_json(row: Row) -> dict[str, Any]:
    """The row as one line of metrics.jsonl: its kind, then its fields (absent ones left out)."""
    out: dict[str, Any] = {"kind": row.kind}
    for f in fields(row):
        value = getattr(row, f.name)
        if value is None:
            continue
        if f.name == "arch":
            out.update(value)
        elif isinstance(value, Histogram):
            parts = {k.name: getattr(value, k.name) for k in fields(value)}
            out[f.name] = {k: list(v) if isinstance(v, tuple) else v for k, v in parts.items() if v is not None}
        else:
            out[f.name] = value
    return out


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class _Invalid(Exception):
    """A row's step is missing or not a whole number: the row is skipped."""


def _value(raw: Any, annotation: str, present: bool, required: bool) -> Any:
    """A field's value read from a file: a whole number (None when unusable; the row is skipped without its step), a
    float (NaN when present but unusable or required but missing), a string, or a histogram."""
    if annotation.startswith("Histogram"):
        return _histogram(raw)
    if annotation == "str":
        return raw if isinstance(raw, str) else ""
    if annotation.startswith("int"):
        if isinstance(raw, int) and not isinstance(raw, bool) and abs(raw) < MAX_INT:
            return raw
        if annotation == "int" and required:
            raise _Invalid
        return None
    if _is_number(raw) and abs(raw) < 1e308:
        return float(raw)
    return math.nan if present or required else None


def _histogram(value: Any) -> Histogram | None:
    if not isinstance(value, dict):
        return None
    edges, counts = value.get("log10_edges"), value.get("counts")
    if not isinstance(edges, list) or not isinstance(counts, list) or len(counts) > 1000 or len(edges) > 1001:
        return None
    if not all(_is_number(e) for e in edges) or not all(isinstance(c, int) and 0 <= c < MAX_INT for c in counts):
        return None
    never, median = value.get("never_fired"), value.get("median")
    return Histogram(
        tuple(float(e) for e in edges),
        tuple(counts),
        never if isinstance(never, int) and 0 <= never < MAX_INT else None,
        float(median) if _is_number(median) and math.isfinite(median) else None,
    )


def parse_row(data: Any, stage: str) -> Row | None:
    """One line of a stage's metrics.jsonl as its typed row; None for an unknown kind or a row without its step."""
    row_type = ROW_TYPES.get((stage, data.get("kind"))) if isinstance(data, dict) else None
    if row_type is None:
        return None
    known = {f.name for f in fields(row_type)} | {"kind"}
    given: dict[str, Any] = {}
    try:
        for f in fields(row_type):
            if f.name == "arch":
                extra = {k: v for k, v in data.items() if k not in known and _is_number(v) and abs(v) < 1e308}
                given["arch"] = {k: float(v) for k, v in extra.items()}
            else:
                required = f.default is MISSING and f.default_factory is MISSING
                given[f.name] = _value(data.get(f.name), f.type, f.name in data, required)
    except _Invalid:
        return None
    return row_type(**given)


def read_rows(path: Path, stage: str) -> list[Row]:
    """Every readable row of a stage's metrics file, in order (a torn or foreign line is skipped)."""
    rows = (parse_row(data, stage) for data in read_jsonl(path))
    return [row for row in rows if row is not None]


def append_row(path: Path, row: Row) -> None:
    append_jsonl(path, to_json(row))


def truncate_rows(path: Path, last_step: int | None) -> None:
    """Drop the rows after `last_step` (all of them when None): a resumed run writes them again."""
    if last_step is None:
        truncate_jsonl(path, lambda data: False)
    else:
        truncate_jsonl(path, lambda data: not isinstance(data.get(STEP.key), int) or data[STEP.key] <= last_step)


def latest(rows: list[Row], row_type: type) -> Any:
    """The last row of a type, or None."""
    return next((row for row in reversed(rows) if isinstance(row, row_type)), None)
