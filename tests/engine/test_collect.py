import json
import threading

import numpy as np
import pytest
import torch

from tests.helpers import Collector, make_model_run
from vitsae_tui.engine import metrics
from vitsae_tui.engine.activation_set import ActivationSet, StoreError
from vitsae_tui.engine.config import CollectConfig
from vitsae_tui.engine.data import iterate_batches, load_dataset, normalize
from vitsae_tui.engine.distributed import Ranks
from vitsae_tui.engine.errors import StageError
from vitsae_tui.engine.events import Finished
from vitsae_tui.engine.model_run import load_model
from vitsae_tui.engine.stages import collect as collect_stage
from vitsae_tui.engine.stages.collect import run as collect
from vitsae_tui.engine.token_source import TokenSource
from vitsae_tui.engine.workspace import atomic_torch_save


def collect_cfg(model: str, **kw) -> CollectConfig:
    return CollectConfig(model=model, device="cpu", shard_images=20, batch_size=16, **kw)


def test_stored_activations_equal_the_hook_output(workspace):
    run = make_model_run(workspace)
    result = collect(collect_cfg(run, hook="blocks.0.resid_post"), workspace, Collector(), threading.Event())
    store = ActivationSet(result.run_dir)
    loaded = load_model(workspace, run)
    dataset = load_dataset(workspace, loaded.data, "train")
    assert store.n_images == len(dataset) == 96 and len(store) == 96 * 36
    assert len(store.manifest.shards) == 5  # 20 + 20 + 20 + 20 + 16 images
    with torch.no_grad():
        images, labels, _ok = next(iterate_batches(dataset, np.arange(30), 30))
        expected = loaded.model.run_to(normalize(images), "blocks.0.resid_post").numpy()
    for i in range(30):
        np.testing.assert_allclose(store.image(i).astype(np.float32), expected[i], rtol=2e-3, atol=2e-3)
    np.testing.assert_array_equal(store.token(25 * 36 + 7), store.image(25)[7])
    assert list(store.labels()[:30]) == labels.tolist()
    all_acts = store.load_all().astype(np.float64)
    np.testing.assert_allclose(store.mean, all_acts.mean(0), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(store.var, all_acts.var(0), rtol=1e-5, atol=1e-6)
    assert store.thumbnail(3).shape == (112, 112, 3)
    assert store.concept_maps().shape == (96, len(store.concept_names), 6, 6)
    manifest = store.manifest
    assert manifest.provenance.checkpoint_sha256 == loaded.checkpoint_sha256
    assert manifest.grid == (6, 6) and manifest.complete and manifest.dtype == "float16"


def test_resume_after_a_stop_and_after_a_crash_gives_the_same_store(workspace, monkeypatch):
    run = make_model_run(workspace)
    reference = collect(collect_cfg(run, name="reference"), workspace, Collector(), threading.Event())

    stop = threading.Event()
    calls = {"n": 0}
    real_forward = collect_stage._forward

    def stopping_forward(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:  # a stop request arrives while the third shard is being filled
            stop.set()
        return real_forward(*args, **kwargs)

    monkeypatch.setattr(collect_stage, "_forward", stopping_forward)
    stopped = collect(collect_cfg(run, name="resumed"), workspace, Collector(), stop)
    assert (
        stopped.stopped
        and stopped.n_images == 40
        and not ActivationSet(stopped.run_dir, allow_incomplete=True).manifest.complete
    )
    with pytest.raises(StoreError, match="incomplete.*re-run the same collect command"):
        ActivationSet(stopped.run_dir)

    calls = {"n": 0}

    def crashing_forward(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(28, "No space left on device")
        return real_forward(*args, **kwargs)

    monkeypatch.setattr(collect_stage, "_forward", crashing_forward)
    with pytest.raises(StageError, match="disk is full"):
        collect(collect_cfg(run, name="resumed"), workspace, Collector(), threading.Event())
    monkeypatch.setattr(collect_stage, "_forward", real_forward)

    report = Collector()
    finished = collect(collect_cfg(run, name="resumed"), workspace, report, threading.Event())
    assert report.of(Finished) and not finished.stopped
    a, b = ActivationSet(reference.run_dir), ActivationSet(finished.run_dir)
    np.testing.assert_array_equal(a.load_all(), b.load_all())
    assert a.manifest.images == b.manifest.images
    np.testing.assert_allclose(a.mean, b.mean)
    assert not list(finished.run_dir.glob(".*.tmp"))


def test_shuffled_batches_visit_every_token_once_per_epoch(workspace):
    run = make_model_run(workspace)
    store = ActivationSet(collect(collect_cfg(run, dtype="float32"), workspace, Collector(), threading.Event()).run_dir)
    everything = store.load_all()
    reference = np.sort(everything.view(np.dtype((np.void, everything.dtype.itemsize * everything.shape[1]))).ravel())
    for buffer_rows, chunk_rows in ((1 << 20, 1 << 15), (300, 64)):
        epochs = []
        for epoch in (0, 1):
            batches = list(
                store.shuffled_batches(256, seed=3, epoch=epoch, buffer_rows=buffer_rows, chunk_rows=chunk_rows)
            )
            assert all(len(b) == 256 for b in batches[:-1])
            seen = np.concatenate(batches)
            rows = np.sort(np.ascontiguousarray(seen).view(reference.dtype).ravel())
            np.testing.assert_array_equal(rows, reference)
            epochs.append(seen)
        assert not np.array_equal(epochs[0], epochs[1])
        again = np.concatenate(
            list(store.shuffled_batches(256, seed=3, epoch=0, buffer_rows=buffer_rows, chunk_rows=chunk_rows))
        )
        np.testing.assert_array_equal(again, epochs[0])
    for resident in (True, False):
        source = TokenSource(store, torch.device("cpu"), batch_size=500, seed=1, resident=resident)
        batches = list(source.epoch(0))
        assert [n for _, n in batches] == [len(b) for b, _ in batches]
        seen = torch.cat([b for b, _ in batches]).numpy()
        # full batches only (the short tail is dropped), every token at most once
        assert seen.dtype == np.float32 and len(seen) == len(store) // 500 * 500
        assert all(n == 500 for _, n in batches)
        rows = np.sort(seen.view(reference.dtype).ravel())
        assert len(np.unique(rows)) == len(rows) and np.isin(rows, reference).all()
        skipped = torch.cat([b for b, _ in source.epoch(0, skip_batches=2)]).numpy()
        np.testing.assert_array_equal(skipped, seen[1000:])
        # three data-parallel ranks: each gets a disjoint slice of every global batch, together the same batches
        ranks = [Ranks(r, 3, torch.device("cpu")) for r in range(3)]
        parts = [
            list(TokenSource(store, torch.device("cpu"), 500, 1, resident=resident, part=r.local_rows).epoch(0))
            for r in ranks
        ]
        assert all(len(p) == len(batches) for p in parts)
        for b, (whole, n_global) in enumerate(batches):
            assert [p[b][1] for p in parts] == [n_global] * 3
            np.testing.assert_array_equal(torch.cat([p[b][0] for p in parts]).numpy(), whole.numpy())


def test_mismatched_provenance_is_refused(workspace):
    run = make_model_run(workspace)
    collect(collect_cfg(run, name="set"), workspace, Collector(), threading.Event())
    # the model's best checkpoint changes (e.g. it was trained further): the old set no longer describes it
    atomic_torch_save(
        workspace.root / "models" / run / "best.pt",
        torch.load(workspace.root / "models" / run / "last.pt", weights_only=True),
    )
    with pytest.raises(StageError, match="different best checkpoint.*--name"):
        collect(collect_cfg(run, name="set"), workspace, Collector(), threading.Event())
    collect(collect_cfg(run, name="other", hook="blocks.1.resid_post"), workspace, Collector(), threading.Event())
    with pytest.raises(StageError, match="collected with hook='blocks.1.resid_post', not 'blocks.0.resid_pre'"):
        collect(collect_cfg(run, name="other", hook="blocks.0.resid_pre"), workspace, Collector(), threading.Event())


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda m: m.update(d_model="64"), "wrong 'd_model'"),
        (lambda m: m.pop("shards"), "wrong 'shards'"),
        (lambda m: m.update(d_model=10**9), "absurd size"),
        (lambda m: m["shards"][0]["files"].update(acts="../../models/x.npy"), "outside the set"),
        (lambda m: m["shards"][1].update(rows=[0, 10]), "inconsistent row ranges"),
        (lambda m: m.update(n_tokens=5), "totals do not match"),
    ],
)
def test_bad_manifests_are_refused_with_a_message(workspace, mutate, message):
    run = make_model_run(workspace)
    set_dir = collect(collect_cfg(run), workspace, Collector(), threading.Event()).run_dir
    manifest = json.loads((set_dir / "manifest.json").read_text())
    mutate(manifest)
    (set_dir / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(StoreError, match=message):
        ActivationSet(set_dir)


def test_a_shard_of_the_wrong_shape_is_refused(workspace):
    run = make_model_run(workspace)
    set_dir = collect(collect_cfg(run), workspace, Collector(), threading.Event()).run_dir
    np.save(set_dir / "shard-00000.npy", np.zeros((5, 3), dtype=np.float16))
    with pytest.raises(StoreError, match="has shape"):
        ActivationSet(set_dir)


def test_missing_model_and_bad_hook_are_one_sentence(workspace):
    with pytest.raises(StageError, match="no run 'nope-1'"):
        collect(collect_cfg("nope-1"), workspace, Collector(), threading.Event())
    run = make_model_run(workspace)
    with pytest.raises(StageError, match="no hook point 'blocks.9.resid_post'"):
        collect(collect_cfg(run, hook="blocks.9.resid_post"), workspace, Collector(), threading.Event())


def test_a_folder_collected_with_a_model_of_another_dataset_keeps_its_own_class_names(workspace, tmp_path):
    from PIL import Image

    from vitsae_tui.engine.config import DataConfig, IndexConfig, SAETrainConfig
    from vitsae_tui.engine.events import Log, Metrics
    from vitsae_tui.engine.feature_index import FeatureIndex
    from vitsae_tui.engine.stages.index import run as build_index
    from vitsae_tui.engine.stages.train_sae import run as train_sae
    from vitsae_tui.engine.synthetic import CLASS_NAMES

    rng = np.random.default_rng(0)
    for label in ("cats", "dogs"):
        (tmp_path / "pets" / label).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(
                tmp_path / "pets" / label / f"{i}.png"
            )
    model = make_model_run(workspace)  # trained on the synthetic shapes: its classes are not cats and dogs
    data = DataConfig(dataset=str(tmp_path / "pets"))
    set_dir = collect(collect_cfg(model, split="all", data=data), workspace, Collector(), threading.Event()).run_dir
    store = ActivationSet(set_dir)
    assert store.class_names == ["cats", "dogs"]

    report = Collector()
    sae_cfg = SAETrainConfig(
        activations=set_dir.name, tokens=2048, batch_size=128, eval_every=8, log_every=4, heldout_every=4, device="cpu"
    )
    sae_dir = train_sae(sae_cfg, workspace, report, threading.Event()).run_dir
    warnings = [e.message for e in report.of(Log) if "spliced-in evaluation is off" in e.message]
    assert warnings and f"the model predicts {len(CLASS_NAMES)} classes" in warnings[0] and "cats, dogs" in warnings[0]
    evals = [metrics.to_json(e.row) for e in report.of(Metrics) if e.row.kind == "eval"]
    assert evals and all(row["eval_images"] == 3 and row["eval_fvu"] > 0 for row in evals)
    assert not any("acc_sae" in row or "ce_sae" in row for row in evals)  # no accuracy against wrong labels

    build_index(IndexConfig(sae=sae_dir.name, device="cpu"), workspace, Collector(), threading.Event())
    index = FeatureIndex(workspace, sae_dir.name)
    assert index.image_info(0).class_name in ("cats", "dogs")
    promoted, suppressed = index.class_effect(0)
    assert {name for name, _ in promoted + suppressed} <= set(CLASS_NAMES)  # logits of the model, named by its classes
