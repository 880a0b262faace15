import math
import threading

import numpy as np
import pytest
import torch
from PIL import Image

from tests.helpers import Collector, make_indexed_workspace, write_activation_set
from vitsae_tui.engine.cards import feature_card, image_card
from vitsae_tui.engine.concepts import TOP_K, auroc, concept_recovery
from vitsae_tui.engine.config import IndexConfig
from vitsae_tui.engine.errors import StageError
from vitsae_tui.engine.feature_index import open_index_for
from vitsae_tui.engine.stages.index import run as build_index


@pytest.fixture(scope="module")
def indexed(tmp_path_factory):
    ws, sae_run = make_indexed_workspace(tmp_path_factory.mktemp("indexed") / "ws")
    return ws, sae_run, open_index_for(ws, sae_run)


def all_feature_acts(index):
    x = torch.from_numpy(index.store.load_all().astype(np.float32))
    with torch.no_grad():
        return index.sae.encode_raw(x).numpy()


def test_top_k_equals_brute_force(indexed):
    _ws, _run, index = indexed
    f = all_feature_acts(index)
    assert (f > 0).any()
    for feature in range(index.d_sae):
        column = f[:, feature]
        order = sorted(np.flatnonzero(column > 0), key=lambda t: (-column[t], t))[:TOP_K]
        got = index.arrays.top_tokens[feature]
        assert list(got[got >= 0]) == order, feature
        np.testing.assert_allclose(index.arrays.top_values[feature][: len(order)], column[order], rtol=1e-6)


def test_density_mean_max_and_classes_equal_a_direct_computation(indexed):
    _ws, _run, index = indexed
    f = all_feature_acts(index)
    fired = f > 0
    np.testing.assert_allclose(index.arrays.density, fired.mean(0))
    np.testing.assert_allclose(index.arrays.max_activation, f.max(0), rtol=1e-6)
    mean = np.where(fired.any(0), f.sum(0) / np.maximum(fired.sum(0), 1), 0)
    np.testing.assert_allclose(index.arrays.mean_activation, mean, rtol=1e-4, atol=1e-6)
    labels = np.repeat(index.store.labels(), index.store.tokens_per_image)
    expected = np.stack([(fired & (labels == c)[:, None]).sum(0) for c in range(10)], 1)
    np.testing.assert_array_equal(index.arrays.class_counts, expected)
    assert index.arrays.activation_hist.sum() == fired.sum()
    bands = index.arrays.band_tokens
    for feature in range(index.d_sae):
        tokens = bands[feature][bands[feature] >= 0]
        assert np.all(f[tokens, feature] > 0)


def test_per_token_top_features_equal_a_direct_encode(indexed):
    _ws, _run, index = indexed
    x = torch.from_numpy(index.store.image(7).astype(np.float32))
    with torch.no_grad():
        direct = index.sae.encode_raw(x).numpy()
    for token in (0, 14, 35):
        expected = [j for j in np.argsort(-direct[token], kind="stable")[:5] if direct[token, j] > 0]
        assert [j for j, _ in index.top_features(7, token, 5)] == expected
    np.testing.assert_allclose(index.heatmap(7, 3), direct[:, 3].reshape(6, 6))


def test_auroc_on_known_cases():
    assert auroc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([False, False, True, True])) == pytest.approx(0.75)
    assert auroc(np.array([1.0, 2.0, 3.0]), np.array([False, True, True])) == 1.0
    assert auroc(np.array([3.0, 2.0, 1.0]), np.array([False, True, True])) == 0.0
    assert auroc(np.zeros(6), np.array([True, False] * 3)) == 0.5
    assert math.isnan(auroc(np.ones(3), np.ones(3, dtype=bool)))


def concept_case(n_images=200, seed=0):
    """36 patches per image; 'shape:a' and 'shape:b' on object patches; feature 4 is exactly shape:a."""
    rng = np.random.default_rng(seed)
    n = n_images * 36
    on_object = rng.random(n) < 0.4
    is_a = on_object & (rng.random(n) < 0.5)
    concepts = np.stack([is_a, on_object & ~is_a, ~on_object], axis=1)
    x = rng.normal(size=(n, 4))
    x[:, 2] += is_a * 1.0  # a weaker neuron
    feats = np.abs(rng.normal(size=(n, 6))) * (rng.random((n, 6)) < 0.1)
    feats[:, 4] = is_a * rng.uniform(1, 2, n)  # a perfect, sparse feature
    feats[:, 1] = on_object * rng.uniform(1, 2, n)  # fires on every object: a concept-blind feature
    return x, feats, concepts, np.repeat(np.arange(n_images), 36)


NAMES = ["shape:a", "shape:b", "background:plain"]


def split_case(case, held_out):
    x, feats, concepts, images = case
    test = np.isin(images, held_out)
    return (x[~test], feats[~test], concepts[~test]), (x[test], feats[test], concepts[test], images[test])


def test_concept_recovery_selects_on_train_and_scores_held_out_images():
    train, test = split_case(concept_case(), np.arange(150, 200))
    report = concept_recovery(train, test, NAMES, "val", 150)
    a = report.concepts[0]
    assert a.concept == "shape:a" and a.feature == 4
    assert a.sae.f1 == 1.0 and a.sae.mcc == 1.0 and a.sae.parent_mcc == 1.0 and a.matched
    assert a.neuron == 2 and a.neuron_sign == 1 and 0.3 < a.neurons.f1 < 0.95
    assert a.probe.f1 > a.neurons.f1 - 0.05
    # the concept-blind object indicator: all recall, no discrimination among object patches
    assert a.baseline.recall == 1.0 and a.baseline.parent_mcc == 0.0 and not (a.baseline.f1 >= 0.99)
    assert a.sae.f1_low <= a.sae.f1 <= a.sae.f1_high and a.neurons.f1_low < a.neurons.f1 < a.neurons.f1_high
    assert report.heldout_images == 50 and report.heldout_split == "val"
    b = report.concepts[1]
    assert b.feature != 1 or not b.matched  # the object feature never clears the bar: its within-parent MCC is ~0
    ks = [p.k for p in report.sparse_probing]
    assert ks == [1, 2, 4, 8, 16] and report.sparse_probing[0].sae_f1 > 0.6


def test_a_feature_that_matches_only_the_training_images_scores_low_on_held_out_ones():
    x, feats, concepts, images = concept_case()
    test_rows = images >= 150
    feats[:, 5] = 0.0
    feats[~test_rows, 5] = concepts[~test_rows, 0] * 3.0  # a perfect match on train, silent on the held-out images
    feats[:, 4] = concepts[:, 0] * (np.random.default_rng(1).random(len(feats)) < 0.8)  # recall 0.8 everywhere
    report = concept_recovery(*split_case((x, feats, concepts, images), np.arange(150, 200)), NAMES, "val", 150)
    a = report.concepts[0]
    assert a.feature == 5 and a.sae.f1 == 0.0 and not a.matched  # selected in-sample, it would have scored 1.0


def test_absorption_finds_a_parent_feature_that_skips_one_child():
    rng = np.random.default_rng(2)
    n = 200 * 36
    shape = rng.random(n) < 0.5
    red = rng.random(n) < 0.3
    concepts = np.stack([shape, ~shape, red, ~red], axis=1)
    feats = np.zeros((n, 3))
    feats[:, 0] = shape & ~red  # the circle feature stays silent on red circles
    feats[:, 1] = shape & red  # where this red-circle feature takes over
    feats[:, 2] = rng.random(n) < 0.1
    x = rng.normal(size=(n, 4))
    images = np.repeat(np.arange(200), 36)
    names = ["shape:circle", "shape:square", "colour:red", "colour:blue"]
    report = concept_recovery(*split_case((x, feats, concepts, images), np.arange(150, 200)), names, "val", 150)
    circle = next(a for a in report.absorption if a.parent == "shape:circle")
    assert circle.children == "colour" and circle.recall_min == 0.0 and circle.worst_child == "colour:red"
    assert circle.split_features == 1 and circle.absorbed_fraction == pytest.approx(0.3, abs=0.05)


def test_synthetic_sets_get_concept_scores(indexed):
    _ws, _run, index = indexed
    names = {c.concept for c in index.concepts}
    assert "shape:circle" in names and all(0 <= c.sae.f1 <= 1 for c in index.concepts)
    summary = index.meta.summary
    assert summary.concepts == len(index.concepts) and summary.mean_sae_f1 is not None
    assert summary.heldout_split == "train-heldout"  # no validation split was collected
    assert index.concept_report.heldout_images == 96 // 20


def test_the_concepts_command_prints_every_interval_whole_in_80_columns_and_the_report_as_json(indexed, monkeypatch):
    import contextlib
    import io
    import json

    from vitsae_tui import cli

    ws, run, index = indexed
    monkeypatch.setenv("COLUMNS", "80")
    printed, as_json = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert cli.main(["--workspace", str(ws.root), "concepts", "--sae", run]) == 0
    with contextlib.redirect_stdout(as_json):
        assert cli.main(["--workspace", str(ws.root), "concepts", "--sae", run, "--json"]) == 0
    lines = printed.getvalue().splitlines()
    assert max(map(len, lines)) <= 80 and "…" not in printed.getvalue()
    for c in index.concepts:
        d = c.sae
        row = f"{d.f1:.2f} [{d.f1_low:.2f},{d.f1_high:.2f}]"
        assert any(line.startswith(c.concept + " ") and row in line for line in lines), c.concept
    report = json.loads(as_json.getvalue())
    assert [c["concept"] for c in report["concepts"]] == [c.concept for c in index.concepts]
    assert report["concepts"][0]["sae"]["parent_mcc_high"] == index.concepts[0].sae.parent_mcc_high
    assert [p["k"] for p in report["sparse_probing"]] == [1, 2, 4, 8, 16]


def test_labels_persist_and_survive_reindexing(indexed):
    ws, sae_run, index = indexed
    index.set_label(5, "stripes detector", "fires on striped backgrounds")
    build_index(IndexConfig(sae=sae_run, device="cpu"), ws, Collector(), threading.Event())
    again = open_index_for(ws, sae_run)
    assert again.label(5) == "stripes detector"
    again.set_label(5, "")
    assert open_index_for(ws, sae_run).label(5) == ""


def test_index_of_an_sae_on_a_mismatched_set_names_both_sides(indexed):
    ws, sae_run, _index = indexed
    write_activation_set(ws, "other", np.zeros((4, 36, 7)), hook="blocks.0.resid_post")
    with pytest.raises(StageError, match="d_model 16.*d_model 7"):
        build_index(IndexConfig(sae=sae_run, activations="other"), ws, Collector(), threading.Event())
    with pytest.raises(StageError, match="no feature index yet"):
        open_index_for(ws, sae_run, activations="other")


def test_png_exports_put_the_heatmap_where_the_activations_are(indexed, tmp_path):
    _ws, _run, index = indexed

    def far_cold_patch(heat):
        """A silent patch two or more cells from every active one (bilinear blending reaches one cell)."""
        active = np.argwhere(heat > 0)
        for patch in range(36):
            r, c = divmod(patch, 6)
            if len(active) and np.abs(active - [r, c]).max(1).min() >= 2:
                return patch
        return None

    # a feature that fires on part of its top image, so the heatmap has hot and cold patches
    feature, image = next(
        (j, index.top_examples(j)[0][0])
        for j in range(index.d_sae)
        if index.top_examples(j) and far_cold_patch(index.heatmap(index.top_examples(j)[0][0], j)) is not None
    )
    heat = index.heatmap(image, feature)
    hot = int(np.argmax(heat))
    cold = far_cold_patch(heat)
    assert heat.flat[hot] > 0 and heat.flat[cold] == 0
    plain = np.asarray(Image.open(image_card(index, image, tmp_path / "plain.png")).convert("RGB"), dtype=np.float32)
    tinted = np.asarray(
        Image.open(image_card(index, image, tmp_path / "heat.png", feature=feature)).convert("RGB"), dtype=np.float32
    )
    assert tinted.shape == plain.shape == (448 + 28, 448, 3)
    cell = 448 // 6

    def change(patch):
        r, c = divmod(patch, 6)
        sl = np.s_[r * cell + 10 : (r + 1) * cell - 10, c * cell + 10 : (c + 1) * cell - 10]
        return np.abs(tinted[sl] - plain[sl]).mean()

    # where the feature fires the image keeps its colours; where it is silent it is dimmed to grey
    assert change(cold) > 20 and change(cold) > 4 * change(hot)
    card = Image.open(feature_card(index, feature, tmp_path / "card.png", columns=4, rows=2, tile=100))
    assert card.size == (4 * 100 + 5 * 8, 92 + 2 * (100 + 24) + 8)


def test_best_thresholds_equal_a_brute_force_search_with_ties():
    from vitsae_tui.engine.concepts import best_thresholds

    rng = np.random.default_rng(4)
    scores = rng.integers(0, 12, size=(300, 5)).astype(np.float64)  # many ties
    positive = rng.random(300) < 0.3 + 0.05 * scores[:, 2]
    f1, thresholds = best_thresholds(scores, positive)
    for k in range(5):
        brute = max(
            2 * (positive & (scores[:, k] > t)).sum() / ((scores[:, k] > t).sum() + positive.sum())
            for t in np.unique(scores[:, k]) - 0.5
        )
        assert f1[k] == pytest.approx(brute)
        achieved = scores[:, k] > thresholds[k]
        assert 2 * (positive & achieved).sum() / (achieved.sum() + positive.sum()) == pytest.approx(f1[k])


def test_a_concept_score_is_printed_on_the_side_of_the_bar_it_falls():
    from vitsae_tui.engine.concepts import MATCH_F1, decisive

    assert decisive(0.498, MATCH_F1) == "0.498" and decisive(0.4999, MATCH_F1) == "0.4999"
    assert decisive(0.502, MATCH_F1) == "0.50" and decisive(0.5, MATCH_F1) == "0.50"
    assert decisive(0.61, MATCH_F1) == "0.61" and decisive(0.296, 0.3) == "0.296"


def test_a_number_outside_the_index_is_a_users_one_sentence_and_exit_1(indexed, capsys):
    from vitsae_tui import cli
    from vitsae_tui.engine.errors import OutOfRange, UserError

    ws, run, index = indexed
    for reach in (lambda: index.store.thumbnail(index.n_images), lambda: index.summary(index.d_sae)):
        with pytest.raises(OutOfRange) as raised:
            reach()
        assert isinstance(raised.value, UserError) and "outside 0.." in str(raised.value)
    args = ["--workspace", str(ws.root), "inspect", "--sae", run, "--image", str(index.n_images)]
    assert cli.main(args) == 1
    assert capsys.readouterr().err.strip() == f"vitsae-tui: image {index.n_images} is outside 0..{index.n_images - 1}"
