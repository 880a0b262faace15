"""Metric rows round-trip through metrics.jsonl, an untrusted file reads as typed rows or not at all, and every field
a row carries has one catalogue entry that says how it is shown."""

import dataclasses
import json
import math

import pytest

from vitsae_tui.engine import metrics
from vitsae_tui.formatting import format_metrics, summary_lines, table_cell

EVAL = metrics.SAEEval(
    run="sae-1",
    step=40,
    eval_split="val",
    eval_images=30,
    eval_tokens=1080,
    eval_fvu=0.12,
    eval_mse=0.5,
    eval_l0=9.5,
    eval_never_fired_fraction=0.25,
    eval_dense_fraction=0.0,
    eval_explained_variance=0.88,
    eval_l2_ratio=0.97,
    eval_decoder_max_cosine=0.4,
    density=metrics.Histogram((-7.0, -3.5, 0.0), (3, 5), never_fired=2),
    theta=metrics.Histogram((-6.0, 1.0), (10,), median=0.01),
    eval_kl=0.03,
    eval_delta_ce=0.01,
    acc_worst_class=2,
)
ROWS = {
    "train-model": [
        metrics.ModelStep(step=5, epoch=0.25, train_loss=2.1, train_accuracy=0.3, lr=1e-3),
        metrics.ModelEpoch(step=20, epoch=1, val_loss=1.9, val_accuracy=0.4, val_images=64),
    ],
    "train-sae": [
        metrics.SAEStep("sae-1", 20, 81920, 0.5, 0.12, 9.5, 0.01, 7e-5, 9e4, {"l0_coeff": 0.003, "in_window": 0.1}),
        EVAL,
    ],
}


@pytest.mark.parametrize("stage", sorted(ROWS))
def test_rows_round_trip_through_the_file(tmp_path, stage):
    path = tmp_path / metrics.METRICS_FILE
    for row in ROWS[stage]:
        metrics.append_row(path, row)
    assert metrics.read_rows(path, stage) == ROWS[stage]
    metrics.truncate_rows(path, ROWS[stage][0].step)
    assert metrics.read_rows(path, stage) == ROWS[stage][:1]
    metrics.truncate_rows(path, None)
    assert metrics.read_rows(path, stage) == []


@pytest.mark.parametrize(
    "line",
    [
        {"kind": "step", "step": True},  # a bool is not a step
        {"kind": "step", "step": 10**30},  # out of range
        {"kind": "step", "step": "3"},
        {"kind": "step"},
        {"kind": "nonsense", "step": 3},
        ["kind", "step"],
    ],
)
def test_a_row_without_a_usable_step_or_kind_is_skipped(line):
    assert metrics.parse_row(line, "train-model") is None


def test_wrong_values_read_as_missing_never_as_a_crash():
    row = metrics.parse_row(
        {"kind": "eval", "run": 7, "step": 3, "eval_images": 2, "eval_tokens": 72, "eval_fvu": "high", "eval_l0": None,
         "eval_kl": None, "density": {"log10_edges": [0, 1], "counts": [-1]}, "theta": {"counts": "x"}},
        "train-sae",
    )  # fmt: skip
    assert row.run == "" and math.isnan(row.eval_fvu) and math.isnan(row.eval_l0)
    assert math.isnan(row.eval_kl), "a measured but non-finite KL is NaN (JSON null), an unmeasured one None"
    assert row.eval_delta_ce is None and not metrics.values(row).get("eval_kl")
    assert row.density is None and row.theta is None
    assert metrics.parse_row({"kind": "eval", "step": 3, "eval_images": True}, "train-sae").eval_images is None
    huge = json.loads('{"kind": "step", "step": 3, "tokens": 1, "l0_coeff": 1' + "0" * 400 + "}")  # parses, too big
    assert metrics.parse_row(huge, "train-sae").arch == {}, "a number no float holds is left out, not a crash"


def test_every_field_of_every_row_and_every_architecture_metric_is_in_the_catalogue():
    for row_type in metrics.ROW_TYPES.values():
        for field in dataclasses.fields(row_type):
            if field.name not in ("arch", "density", "theta"):
                assert field.name in metrics.CATALOGUE, (row_type.__name__, field.name)
    for name in ("in_window", "theta_reached", "l0_coeff"):
        assert name in metrics.CATALOGUE
    for group in (metrics.COMPARE_RECONSTRUCTION, metrics.COMPARE_SPLICED):
        assert sorted(m.column for m in group) == list(range(1, len(group) + 1)), "each column has its own place"
    assert set(metrics.COMPARE_SCREEN) <= {*metrics.COMPARE_RECONSTRUCTION, *metrics.COMPARE_SPLICED}


def test_the_catalogue_formats_progress_lines_tables_and_summaries():
    step = ROWS["train-sae"][0]
    assert format_metrics(metrics.values(step)) == "MSE 0.5  FVU 0.1200  L0 9.5  dead 1.0%  tok/s 90,000"
    assert table_cell(metrics.ACC_SAE, 0.875) == "87.5" and table_cell(metrics.EVAL_KL, math.nan) == "–"
    assert summary_lines({"best_val_accuracy": 0.97, "elapsed_s": 75.0, "bytes_on_disk": 2_500_000}) == [
        "best validation accuracy: 97.0%",
        "time: 1:15",
        "size on disk: 2.5 MB",
    ]
    assert summary_lines({"acc_worst_class": 3}) == ["worst class: 3"], "a class index is not a percentage"


def test_a_file_written_by_the_previous_release_reads_the_same():
    line = (
        '{"kind": "step", "run": "sae-2", "step": 25, "tokens": 102400, "mse": 0.9, "fvu": 0.2, "l0": 12.5, '
        '"dead_fraction": 0.0, "in_window": 0.004, "theta_reached": 0.8, "l0_coeff": 0.001, "lr": 7e-05, '
        '"tokens_per_s": 120000.0}'
    )
    row = metrics.parse_row(json.loads(line), "train-sae")
    assert row.arch == {"in_window": 0.004, "theta_reached": 0.8, "l0_coeff": 0.001}
    assert metrics.to_json(row) == json.loads(line)
