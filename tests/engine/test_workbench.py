"""The patch workbench on a tiny model: the splice is exact, attributions match finite differences, and a planted
feature that drives one class is found first and moves that class when edited."""

import contextlib
import io
import json

import numpy as np
import pytest
import torch

from vitsae_tui import cli
from vitsae_tui.engine.feature_index import open_index_for
from vitsae_tui.engine.model_run import load_model
from vitsae_tui.engine.workbench import Edit, Workbench, WorkbenchError, spearman

PLANTED, DRIVEN = 5, 3


def plant_a_class_feature(sae, store, model_run, ws) -> None:
    """Feature PLANTED fires on every patch and writes the direction that most raises class DRIVEN's logit."""
    model = load_model(ws, model_run).model
    x = torch.from_numpy(store.image(0).astype(np.float32))[None].requires_grad_(True)
    model.run_from(store.hook, x)[0, DRIVEN].backward()
    direction = x.grad[0].mean(0)
    with torch.no_grad():
        sae.W_dec[PLANTED] = direction / direction.norm()
        sae.W_enc[:, PLANTED] = 0.0
        sae.b_enc[PLANTED] = 40.0 / store.d_model**0.5  # fires everywhere, 80x its threshold


@pytest.fixture(scope="module")
def bench(planted):
    ws, sae = planted
    return ws, sae, Workbench(ws, open_index_for(ws, sae))


def test_splicing_with_the_error_term_and_no_edit_gives_the_clean_logits(bench):
    _, _, workbench = bench
    for image in (0, 7):
        result = workbench.intervene(image, Edit((PLANTED,), "scale", 1.0))
        assert np.abs(result.logits_spliced - result.logits_clean).max() <= 1e-5
        assert np.abs(result.logits_after - result.logits_clean).max() <= 1e-5
        assert np.abs(result.patch_change).max() <= 1e-5


def test_attributions_match_finite_differences_and_sum_over_patches(bench):
    _, _, workbench = bench
    attribution = workbench.attribute(2, top=8)
    eps = 1e-3
    for row in attribution.features[:5]:
        # a central difference: the planted feature is strong enough that a one-sided step sees the curvature
        up, down = (
            workbench.intervene(2, Edit((row["feature"],), "scale", 1 + sign * eps), attribution.target)
            for sign in (1, -1)
        )
        change = (up.logits_after[attribution.target] - down.logits_after[attribution.target]) / 2
        assert change == pytest.approx(eps * row["attribution"], rel=0.05, abs=1e-5)
    total = sum(row["attribution"] for row in attribution.features)
    assert attribution.patch_grid.sum() == pytest.approx(total, rel=1e-4, abs=1e-5)
    checked = [row for row in attribution.features if row["exact_effect"] is not None]
    assert len(checked) == min(8, len(attribution.features))


def test_a_planted_feature_that_drives_a_class_ranks_first_and_moves_that_class(bench):
    _, _, workbench = bench
    attribution = workbench.attribute(1, target=DRIVEN)
    assert attribution.features[0]["feature"] == PLANTED
    assert attribution.features[0]["exact_effect"] > 0
    zeroed = workbench.intervene(1, Edit((PLANTED,), "zero"), DRIVEN)
    assert zeroed.logits_after[DRIVEN] < zeroed.logits_spliced[DRIVEN] - 1.0
    one_patch = workbench.intervene(1, Edit((PLANTED,), "zero", patches=(4,)), DRIVEN)
    changed = np.flatnonzero(one_patch.patch_change.ravel())
    assert list(changed) == [4] and one_patch.patch_change.ravel()[4] < 0
    steered = workbench.intervene(1, Edit((PLANTED,), "add", 5.0), DRIVEN)
    assert steered.logits_after[DRIVEN] > steered.logits_spliced[DRIVEN]
    undone = workbench.intervene(1, (Edit((PLANTED,), "scale", 2.0), Edit((PLANTED,), "scale", 0.5)), DRIVEN)
    assert np.abs(undone.logits_after - undone.logits_spliced).max() <= 1e-4  # edits compose in order


def test_bad_edits_are_one_sentence(bench):
    _, _, workbench = bench
    for edit, message in [
        (Edit((10**6,)), "outside 0.."),
        (Edit((1,), "scale", float("nan")), "finite"),
        (Edit((1,), patches=(99,)), "patches must be"),
        (Edit((), "zero"), "at least one feature"),
    ]:
        with pytest.raises(WorkbenchError, match=message):
            workbench.intervene(0, edit)
    with pytest.raises(WorkbenchError, match="outside"):
        workbench.attribute(10**6)


def test_spearman_handles_ties_and_constants():
    assert spearman(np.array([1.0, 2.0, 3.0]), np.array([10.0, 20.0, 30.0])) == pytest.approx(1.0)
    assert spearman(np.array([1.0, 2.0, 3.0, 4.0]), np.array([4.0, 3.0, 3.0, 1.0])) < -0.9
    assert spearman(np.array([1.0, 1.0, 1.0]), np.array([1.0, 2.0, 3.0])) is None


def run_json(ws, *argv) -> dict:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli.main(["--workspace", str(ws.root), *argv, "--json"]) == 0
    return json.loads(out.getvalue())


def test_the_cli_json_of_attribute_and_intervene(bench):
    ws, sae, workbench = bench
    attributed = run_json(ws, "attribute", "--sae", sae, "--image", "1", "--class", str(DRIVEN), "--top", "4")
    assert attributed["features"][0]["feature"] == PLANTED and attributed["target"] == DRIVEN
    assert len(attributed["patch_grid"]) == workbench.index.grid and len(attributed["class_names"]) == 10
    assert sum(row["exact_effect"] is not None for row in attributed["features"]) == 4
    assert [row["k"] for row in attributed["sufficiency"]] == [1, 2, 4, 8, 16, 32, 64]
    edited = run_json(
        ws, "intervene", "--sae", sae, "--image", "1", "--feature", str(PLANTED), "--zero", "--patches", "0,1"
    )
    for key in ("logits_clean", "logits_spliced", "logits_after", "probs_before", "probs_after"):
        assert len(edited[key]) == 10
    assert edited["edits"] == [{"features": [PLANTED], "mode": "zero", "value": 0.0, "patches": [0, 1]}]
    assert sum(edited["probs_after"]) == pytest.approx(1.0, abs=1e-5)
    direct = workbench.intervene(1, Edit((PLANTED,), "zero", patches=(0, 1)))
    assert edited["logits_after"] == pytest.approx(direct.logits_after.tolist(), abs=1e-5)


def test_the_index_causal_effect_is_the_mean_zeroing_effect_on_the_top_images(bench):
    from vitsae_tui.engine.stages.index import CAUSAL_IMAGES

    _, _, workbench = bench
    index = workbench.index
    images = list(dict.fromkeys(image for image, _, _ in index.top_examples(PLANTED)))[:CAUSAL_IMAGES]
    deltas = []
    for image in images:
        result = workbench.intervene(image, Edit((PLANTED,), "zero"))
        deltas.append(result.logits_after - result.logits_spliced)
    assert index.arrays.causal_effect[PLANTED] == pytest.approx(np.mean(deltas, axis=0), abs=1e-4)
    assert index.arrays.causal_effect[PLANTED, DRIVEN] < -1.0  # the planted feature is what drives that class
    assert index.summary(PLANTED).causal[0][0] == index.meta.model_class_names[DRIVEN]
