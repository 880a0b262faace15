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


def test_concept_recovery_finds_the_planted_feature():
    rng = np.random.default_rng(0)
    concept = rng.random(400) < 0.2
    x = rng.normal(size=(400, 4))
    x[:, 2] += concept * 0.5  # a weak neuron
    feats = np.abs(rng.normal(size=(400, 6))) * (rng.random((400, 6)) < 0.1)
    feats[:, 4] = concept * rng.uniform(1, 2, 400)  # a perfect, sparse feature
    top = np.argsort(-feats.T, axis=1)[:, :10]
    result = concept_recovery(x, feats, concept[:, None], ["thing"], top, concept[:, None])
    assert result[0].feature == 4 and result[0].feature_auroc == 1.0
    assert result[0].neuron == 2 and 0.5 < result[0].neuron_auroc < 1.0
    assert result[0].top_precision == 1.0 and result[0].probe_auroc > result[0].neuron_auroc - 0.1
    assert result[0].best_feature_precision == 1.0 and result[0].best_feature_by_precision == 4
    assert result[0].best_neuron_precision < 1.0


def test_synthetic_sets_get_concept_scores(indexed):
    _ws, _run, index = indexed
    names = {c.concept for c in index.concepts}
    assert "shape:circle" in names and all(0 <= c.feature_auroc <= 1 for c in index.concepts)
    summary = index.meta.summary
    assert summary.concepts == len(index.concepts) and summary.mean_feature_auroc is not None


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
