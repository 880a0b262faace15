"""Bad images, untrusted files and mismatched artifacts: each is decoded, skipped with a count, or refused with one
sentence that names what is wrong, and nothing crafted ever runs."""

import dataclasses
import io
import json
import os
import pickle
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.helpers import TINY_MODEL, Collector, make_model_run, tiny_train_config, write_activation_set
from vitsae_tui.engine import data as data_mod
from vitsae_tui.engine.activation_set import ActivationSet, Manifest, StoreError
from vitsae_tui.engine.config import CollectConfig, DataConfig, IndexConfig, SAETrainConfig
from vitsae_tui.engine.errors import StageError
from vitsae_tui.engine.events import Failed, Log
from vitsae_tui.engine.model_run import load_model
from vitsae_tui.engine.saes.jumprelu import JumpReLUSAE
from vitsae_tui.engine.saes.run import load_sae
from vitsae_tui.engine.stages.collect import run as collect
from vitsae_tui.engine.stages.index import run as build_index
from vitsae_tui.engine.stages.train_model import run as train_model
from vitsae_tui.engine.stages.train_sae import run as train_sae
from vitsae_tui.engine.workspace import Workspace, WorkspaceError, atomic_write_json, read_json

MARKER = Path("/tmp/vitsae-pwned-by-pickle")


class RunsCode:
    """What a malicious checkpoint holds: unpickling it would run a shell command."""

    def __reduce__(self):
        return (os.system, (f"touch {MARKER}",))


def bad_image_folder(root: Path) -> tuple[Path, int, int]:
    """Two classes of good images, plus one of every kind of bad file; returns (folder, good, bad)."""
    rng = np.random.default_rng(0)
    for label in ("cats", "dogs"):
        (root / label).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (50, 70, 3), dtype=np.uint8)).save(root / label / f"ok{i}.jpg")
    good = 6
    cats = root / "cats"
    rgb = Image.fromarray(rng.integers(0, 255, (60, 90, 3), dtype=np.uint8))
    rgb.convert("CMYK").save(cats / "cmyk.jpg")
    Image.fromarray(rng.integers(0, 65535, (40, 40)).astype(np.uint16)).save(cats / "sixteen.png")
    palette = rgb.convert("P")
    palette.save(cats / "palette.png", transparency=0)
    Image.new("RGB", (1, 1), (200, 10, 10)).save(cats / "one-pixel.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotated 90 degrees
    rgb.save(cats / "rotated.jpg", exif=exif)
    good += 5
    buffer = io.BytesIO()
    rgb.save(buffer, "JPEG")
    (cats / "truncated.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 3])
    buffer = io.BytesIO()
    rgb.save(buffer, "PNG")
    (cats / "truncated.png").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    (cats / "zero-bytes.jpg").write_bytes(b"")
    (cats / "text.jpg").write_text("this is not an image")
    Image.new("L", (10_000, 10_000)).save(cats / "bomb.png", compress_level=9)  # 100 Mpx: refused before decoding
    os.symlink("loop-b.jpg", cats / "loop-a.jpg")
    os.symlink("loop-a.jpg", cats / "loop-b.jpg")
    rgb.save(cats / "unreadable.jpg")
    os.chmod(cats / "unreadable.jpg", 0)
    return root, good, 8


@pytest.fixture
def unreadable_for_root(monkeypatch):
    """Permission bits do not stop root: make the chmod-000 file unreadable to this process as it would be to a user."""
    if os.geteuid() != 0:
        return
    real_open = data_mod.Image.open

    def open_unless_unreadable(path, *args, **kwargs):
        if Path(path).name == "unreadable.jpg":
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(data_mod.Image, "open", open_unless_unreadable)


def test_bad_images_are_skipped_with_a_count_and_the_run_says_so(tmp_path, unreadable_for_root):
    folder, good, bad = bad_image_folder(tmp_path / "images")
    ws = Workspace(tmp_path / "ws")
    run = make_model_run(ws)
    report = Collector()
    result = collect(
        CollectConfig(model=run, device="cpu", split="all", data=DataConfig(dataset=str(folder))),
        ws,
        report,
        threading.Event(),
    )
    manifest = Manifest.load(result.run_dir)
    assert (manifest.n_images, manifest.skipped_images) == (good, bad)
    assert f"skipped {bad} unreadable images" in [e.message for e in report.of(Log)]
    assert read_json(result.run_dir / "status.json")["skipped_images"] == bad

    # training on the same folder reports its skips too
    report = Collector()
    cfg = tiny_train_config(
        epochs=1,
        data=DataConfig(dataset=str(folder), val_fraction=0.3),
        model=dataclasses.replace(TINY_MODEL, n_classes=2),
    )
    trained = train_model(cfg, ws, report, threading.Event())
    assert read_json(trained.run_dir / "status.json")["skipped_images"] > 0
    assert any(e.message.startswith("skipped ") for e in report.of(Log))


def test_empty_and_all_bad_folders_are_one_sentence(tmp_path):
    ws = Workspace(tmp_path / "ws")
    run = make_model_run(ws)
    (tmp_path / "empty").mkdir()
    all_bad = tmp_path / "all-bad"
    for label in ("a", "b"):
        (all_bad / label).mkdir(parents=True)
        (all_bad / label / "x.jpg").write_text("not an image")
        (all_bad / label / "y.png").write_bytes(b"")
    with pytest.raises(StageError, match="no images .* found in") as empty:
        collect(
            CollectConfig(model=run, device="cpu", split="all", data=DataConfig(dataset=str(tmp_path / "empty"))),
            ws,
            Collector(),
            threading.Event(),
        )
    with pytest.raises(StageError, match=r"none of the 4 images .* could be decoded") as nothing:
        collect(
            CollectConfig(model=run, device="cpu", split="all", data=DataConfig(dataset=str(all_bad))),
            ws,
            Collector(),
            threading.Event(),
        )
    cfg = tiny_train_config(
        data=DataConfig(dataset=str(all_bad), val_fraction=0.5), model=dataclasses.replace(TINY_MODEL, n_classes=2)
    )
    with pytest.raises(StageError, match=r"none of the \d training images of .* could be decoded") as untrainable:
        train_model(cfg, ws, Collector(), threading.Event())
    for error in (empty, nothing, untrainable):
        assert "\n" not in str(error.value)


def test_crafted_pickles_are_refused_without_running(tmp_path):
    MARKER.unlink(missing_ok=True)
    ws = Workspace(tmp_path / "ws")
    run = make_model_run(ws)
    run_dir = ws.run_dir("models", run)
    evil = pickle.dumps({"model": RunsCode()})
    (run_dir / "best.pt").write_bytes(evil)
    with pytest.raises(WorkspaceError, match="not a valid checkpoint and was not loaded"):
        load_model(ws, run)
    (run_dir / "last.pt").write_bytes(evil)
    with pytest.raises(StageError, match="not a valid checkpoint"):
        train_model(tiny_train_config(), ws, Collector(), threading.Event(), resume=run)
    # an SAE run whose files were replaced by pickles
    write_activation_set(ws, "set", np.random.default_rng(0).standard_normal((20, 36, 8)).astype(np.float32))
    sae = train_sae(
        SAETrainConfig(activations="set", tokens=512, batch_size=256, device="cpu"), ws, Collector(), threading.Event()
    )
    (sae.run_dir / "trainer.pt").write_bytes(evil)
    with pytest.raises(StageError, match="not a valid checkpoint"):
        train_sae(SAETrainConfig(), ws, Collector(), threading.Event(), resume=sae.run_dir.name)
    (sae.run_dir / "sae.safetensors").write_bytes(evil)
    with pytest.raises(WorkspaceError, match="damaged"):
        load_sae(sae.run_dir)
    assert not MARKER.exists(), "a crafted file ran code"


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda m: m.update(d_model="256"), "wrong 'd_model'"),
        (lambda m: m.pop("shards"), "wrong 'shards'"),
        (lambda m: m.update(d_model=10**9), "absurd size"),
        (lambda m: m["shards"][0]["files"].update(acts="../../models/x/best.pt"), "outside the set"),
        (lambda m: m["shards"][0]["files"].update(acts="/etc/passwd"), "outside the set"),
        (lambda m: m["shards"][0].update(images="all"), "malformed shard entries"),
        (lambda m: m.update(n_tokens=10**15), "totals do not match"),
        (lambda m: m.update(mean=[float("nan")] * len(m["mean"])), "NaN, infinite"),
        (lambda m: m.update(version=99), "format version 99"),
    ],
)
def test_crafted_manifests_are_refused_with_a_clear_message(tmp_path, damage, message):
    ws = Workspace(tmp_path / "ws")
    write_activation_set(ws, "set", np.ones((4, 36, 8), dtype=np.float32))
    path = ws.run_dir("activations", "set") / "manifest.json"
    manifest = read_json(path)
    damage(manifest)
    path.write_text(json.dumps(manifest))
    with pytest.raises(StoreError, match=message) as error:
        ActivationSet(path.parent)
    assert "\n" not in str(error.value)


def test_names_that_escape_the_workspace_are_refused(tmp_path):
    ws = Workspace(tmp_path / "ws")
    for name in ("../../etc", "/etc/passwd", "a/b", "..", ""):
        with pytest.raises((WorkspaceError, StageError)):
            train_sae(SAETrainConfig(activations=name, device="cpu"), ws, Collector(), threading.Event())
    config = tiny_train_config()
    run = make_model_run(ws, config)
    with pytest.raises(StageError, match="cannot name an activation set"):
        collect(CollectConfig(model=run, device="cpu", name="../outside"), ws, Collector(), threading.Event())
    assert not (tmp_path / "outside").exists()


def test_mismatches_name_both_sides(tmp_path):
    ws = Workspace(tmp_path / "ws")
    rng = np.random.default_rng(0)
    write_activation_set(ws, "narrow", rng.standard_normal((20, 36, 8)).astype(np.float32))
    write_activation_set(ws, "wide", rng.standard_normal((20, 36, 16)).astype(np.float32), hook="blocks.1.resid_post")
    sae = train_sae(
        SAETrainConfig(activations="narrow", tokens=512, batch_size=256, device="cpu"),
        ws,
        Collector(),
        threading.Event(),
    )
    # an index of this SAE over a set of another width and hook
    report = Collector()
    with pytest.raises(
        StageError,
        match=r"reads blocks.0.resid_post with d_model 8, but activations/wide holds "
        r"blocks.1.resid_post with d_model 16",
    ):
        build_index(IndexConfig(sae=sae.run_dir.name, activations="wide"), ws, report, threading.Event())
    assert report.of(Failed)
    # resuming the SAE after its set was replaced by one of another width
    config = read_json(sae.run_dir / "config.json")
    atomic_write_json(sae.run_dir / "config.json", {**config, "activations": "wide", "tokens": 1024})
    with pytest.raises(
        StageError,
        match=r"trained on blocks.0.resid_post with d_model 8, but activations/wide now "
        r"holds blocks.1.resid_post with d_model 16",
    ):
        train_sae(SAETrainConfig(), ws, Collector(), threading.Event(), resume=sae.run_dir.name)
    # a model checkpoint of another architecture than its config
    small = make_model_run(ws, tiny_train_config())
    other = make_model_run(ws, tiny_train_config(model=dataclasses.replace(TINY_MODEL, n_layer=3)))
    ws.run_dir("models", small).joinpath("best.pt").write_bytes(
        ws.run_dir("models", other).joinpath("best.pt").read_bytes()
    )
    with pytest.raises(
        WorkspaceError,
        match=r"best.pt holds 3 blocks of width 16, but its config.json describes 2 "
        r"blocks of width 16",
    ):
        load_model(ws, small)


def test_an_sae_file_declaring_absurd_or_foreign_shapes_is_refused_before_allocating(tmp_path):
    from safetensors.torch import save_file

    from vitsae_tui.engine.saes.run import SAEMeta

    run_dir = tmp_path / "saes" / "sae-1"
    run_dir.mkdir(parents=True)
    # a header that would make the module allocate 4 TB for b_enc: every tensor has zero elements on disk
    bomb = {
        "W_enc": torch.zeros(0, 10**12),
        "W_dec": torch.zeros(10**12, 0),
        "b_enc": torch.zeros(0),
        "b_dec": torch.zeros(0),
        "threshold": torch.zeros(0),
        "input_scale": torch.tensor(1.0),
    }
    save_file(bomb, str(run_dir / "sae.safetensors"))
    with pytest.raises(WorkspaceError, match="absurd size"):
        load_sae(run_dir)
    honest = JumpReLUSAE(8, 32)
    save_file({k: v.contiguous() for k, v in honest.state_dict().items()}, str(run_dir / "sae.safetensors"))
    SAEMeta("set", "blocks.0.resid_post", 16, 64, 1.0, "demo-1", "0" * 64).dump(run_dir)
    with pytest.raises(WorkspaceError, match="8 -> 32 SAE but its meta.json says 16 -> 64"):
        load_sae(run_dir)


def test_a_folder_with_a_single_class_is_refused_with_a_sentence_about_classes(tmp_path):
    ws = Workspace(tmp_path / "ws")
    folder = tmp_path / "one-class" / "cats"
    folder.mkdir(parents=True)
    for i in range(12):
        Image.new("RGB", (32, 32), (10 * i, 20, 30)).save(folder / f"{i}.png")
    cfg = tiny_train_config(data=DataConfig(dataset=str(folder.parent), val_fraction=0.3))
    with pytest.raises(StageError, match=r"one class folder \(cats\); a classifier needs at least two"):
        train_model(cfg, ws, Collector(), threading.Event())
