"""A researcher's own images: every stage that follows a model or a set reads the same dataset, and what a stage
advises can be pasted as it is."""

import os
import re
import shlex
import threading
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import Collector, tiny_train_config
from vitsae_tui.engine import metrics
from vitsae_tui.engine.activation_set import ActivationSet, find_validation_set
from vitsae_tui.engine.config import CollectConfig, DataConfig, SAETrainConfig
from vitsae_tui.engine.data import load_dataset
from vitsae_tui.engine.events import Log, Metrics
from vitsae_tui.engine.stages.collect import run as collect
from vitsae_tui.engine.stages.train_model import run as train_model
from vitsae_tui.engine.stages.train_sae import run as train_sae

CLASS_COLOURS = {"ants": (200, 40, 40), "bees": (40, 200, 40), "cats": (40, 40, 200), "dogs": (200, 200, 40)}


def make_image_folder(root: Path, per_class: int = 14, flat: bool = False) -> Path:
    """A folder of small PNGs, one sub-folder per class (or all in one when flat), each class its own colour."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for name, colour in CLASS_COLOURS.items():
        folder = root if flat else root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = np.clip(rng.normal(colour, 40, (48, 40, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{name}-{i}.png")
    return root


def train_on(workspace, dataset: str, **data) -> str:
    cfg = tiny_train_config(data=DataConfig(dataset=dataset, **data), epochs=1, batch_size=16)
    return train_model(cfg, workspace, Collector(), threading.Event()).run_dir.name


def quick_sae(activations: str) -> SAETrainConfig:
    return SAETrainConfig(activations=activations, tokens=4096, batch_size=256, eval_every=8, log_every=4, device="cpu")


def test_collect_reads_the_models_own_folder_and_split_from_any_working_directory(workspace, tmp_path, monkeypatch):
    make_image_folder(tmp_path / "pets")
    monkeypatch.chdir(tmp_path)
    model = train_on(workspace, "pets")  # a relative path, as a user types it
    monkeypatch.chdir(workspace.root)  # later stages run from elsewhere
    train = collect(CollectConfig(model=model, device="cpu"), workspace, Collector(), threading.Event()).run_dir
    val = collect(CollectConfig(model=model, device="cpu", split="val"), workspace, Collector(), threading.Event())
    pets = str((tmp_path / "pets").resolve())
    for set_dir in (train, val.run_dir):
        store = ActivationSet(set_dir)
        assert store.provenance.data.dataset == pets and store.class_names == sorted(CLASS_COLOURS)
        assert "pets-" in set_dir.name and "synthetic" not in set_dir.name
    folder = DataConfig(dataset=pets)
    assert ActivationSet(val.run_dir).n_images == len(load_dataset(workspace, folder, "val"))
    assert ActivationSet(train).n_images == len(load_dataset(workspace, folder, "train"))
    assert find_validation_set(workspace.kind_dir("activations"), ActivationSet(train).provenance) == val.run_dir.name


def test_the_advised_collect_command_pastes_and_is_then_found(workspace, tmp_path, monkeypatch, capsys):
    from vitsae_tui.cli import main

    make_image_folder(tmp_path / "my pets")  # a space: the command must quote it
    model = train_on(workspace, str(tmp_path / "my pets"))
    # collected from the folder by name, at a hook other than the default
    pets = DataConfig(str(tmp_path / "my pets"))
    cfg = CollectConfig(model=model, device="cpu", hook="blocks.0.resid_post", data=pets)
    train = collect(cfg, workspace, Collector(), threading.Event()).run_dir
    report = Collector()
    train_sae(quick_sae(train.name), workspace, report, threading.Event())
    advice = next(e.message for e in report.of(Log) if "no validation split" in e.message)
    command = re.search(r"`(vitsae-tui collect [^`]+)`", advice).group(1)
    assert "--workspace" in command and "--hook blocks.0.resid_post" in command
    monkeypatch.chdir(tmp_path)
    assert main(shlex.split(command)[1:] + ["--device", "cpu"]) == 0
    found = find_validation_set(workspace.kind_dir("activations"), ActivationSet(train).provenance)
    assert found is not None and ActivationSet(workspace.run_dir("activations", found)).provenance.split == "val"
    report = Collector()
    train_sae(quick_sae(train.name), workspace, report, threading.Event())
    assert any(f"evaluating on activations/{found}" in e.message for e in report.of(Log))


def test_a_flat_folder_is_held_out_by_image_and_the_log_says_so(workspace, tmp_path):
    make_image_folder(tmp_path / "labelled")
    make_image_folder(tmp_path / "flat", per_class=5, flat=True)
    model = train_on(workspace, str(tmp_path / "labelled"))
    cfg = CollectConfig(model=model, device="cpu", split="all", data=DataConfig(str(tmp_path / "flat")))
    flat = collect(cfg, workspace, Collector(), threading.Event()).run_dir
    report = Collector()
    train_sae(quick_sae(flat.name), workspace, report, threading.Event())
    logs = [e.message for e in report.of(Log)]
    said = "holds every image of folder flat/ (split all): every 20th image is held out"
    assert any(said in m for m in logs)
    assert not any("--split val" in m for m in logs), "a flat folder has no validation split to advise"
    evals = [metrics.to_json(e.row) for e in report.of(Metrics) if e.row.kind == "eval"]
    assert evals[-1]["eval_split"] == "train-heldout" and evals[-1]["eval_images"] == 1  # image 19 of 20


def make_imagenette_tree(root: Path, per_class: int = 6) -> Path:
    """A miniature Imagenette in the layout its archive extracts to: imagenette2-160/{train,val}/WNID/*.JPEG."""
    from PIL import Image

    rng = np.random.default_rng(1)
    for split in ("train", "val"):
        for wnid, colour in (("n01440764", (180, 90, 40)), ("n02102040", (40, 90, 180))):
            folder = root / "imagenette2-160" / split / wnid
            folder.mkdir(parents=True)
            for i in range(per_class if split == "train" else 3):
                pixels = np.clip(rng.normal(colour, 30, (160, 213, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"ILSVRC2012_val_{i:08d}.JPEG")
    return root


@pytest.mark.parametrize("given", ["parent", "folder"])
def test_imagenette_already_on_disk_trains_collects_and_trains_an_sae_without_downloading(
    workspace, tmp_path, monkeypatch, given
):
    from torchvision.datasets import Imagenette

    def no_download(self):
        raise AssertionError("Imagenette was downloaded although it is on disk")

    monkeypatch.setattr(Imagenette, "_download", no_download)
    root = make_imagenette_tree(tmp_path / "datasets")
    data_dir = root if given == "parent" else root / "imagenette2-160"
    model = train_on(workspace, "imagenette", data_dir=str(data_dir))
    train = collect(CollectConfig(model=model, device="cpu"), workspace, Collector(), threading.Event()).run_dir
    collect(CollectConfig(model=model, device="cpu", split="val"), workspace, Collector(), threading.Event())
    store = ActivationSet(train)
    assert store.class_names == ["tench", "English springer"] and store.n_images == 12
    assert store.provenance.data.dataset == "imagenette" and "imagenette-160px" in train.name
    report = Collector()
    train_sae(quick_sae(train.name), workspace, report, threading.Event())
    evals = [metrics.to_json(e.row) for e in report.of(Metrics) if e.row.kind == "eval"]
    assert evals[-1]["eval_split"] == "val" and evals[-1]["eval_images"] == 6


def test_a_data_dir_without_imagenette_is_one_sentence(workspace, tmp_path):
    from vitsae_tui.engine.errors import StageError

    (tmp_path / "empty").mkdir()
    with pytest.raises(StageError, match=r"holds no imagenette2-160/train; point it at the folder"):
        train_on(workspace, "imagenette", data_dir=str(tmp_path / "empty"))
    assert not os.listdir(tmp_path / "empty"), "a given folder is never downloaded into"
