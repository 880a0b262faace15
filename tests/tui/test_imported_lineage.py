"""An imported timm ViT (14x14 patches after a CLS token) through the whole pipeline: collect, SAE, index, the
workbench's exact splicing over 196 patches, and the browser's cursor over the 14x14 grid."""

import threading

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import save_file
from textual.widgets import Static

from tests.helpers import open_browser, wait_for
from vitsae_tui.engine import synthetic
from vitsae_tui.engine.activation_set import ActivationSet
from vitsae_tui.engine.config import CollectConfig, DataConfig, ImportModelConfig, IndexConfig, SAETrainConfig
from vitsae_tui.engine.feature_index import open_index_for
from vitsae_tui.engine.stages import REGISTRY
from vitsae_tui.engine.workbench import Workbench
from vitsae_tui.engine.workspace import Workspace

pytestmark = pytest.mark.slow  # a whole lineage; the fast tier covers the adapters in tests/engine


def run(stage: str, cfg, ws):
    return REGISTRY[stage].run(cfg, ws, lambda e: None, threading.Event())


@pytest.fixture(scope="module")
def imported_lineage(tmp_path_factory):
    root = tmp_path_factory.mktemp("imported")
    torch.manual_seed(0)
    save_file(timm.create_model("vit_tiny_patch16_224", depth=2).state_dict(), str(root / "vit.safetensors"))
    ws = Workspace(root / "ws")
    run("import-model", ImportModelConfig(spec="timm:vit_tiny_patch16_224", weights=str(root / "vit.safetensors")), ws)
    data = DataConfig(n_train=48, n_val=16)
    collect = CollectConfig(model="vit_tiny_patch16_224-1", data=data, batch_size=16)
    train = run("collect", collect, ws).run_dir.name
    run("collect", CollectConfig(model="vit_tiny_patch16_224-1", data=data, split="val", batch_size=16), ws)
    sae = SAETrainConfig(activations=train, expansion=2, tokens=30_000, batch_size=1024, device="cpu")
    sae_dir = run("train-sae", sae, ws).run_dir
    run("index", IndexConfig(sae=sae_dir.name, device="cpu"), ws)
    return ws, train, sae_dir.name


def test_the_set_holds_the_patch_grid_its_concept_maps_and_keeps_the_cls_token_aside(imported_lineage):
    ws, train, _ = imported_lineage
    store = ActivationSet(ws.run_dir("activations", train))
    assert store.grid == 14 and store.tokens_per_image == 196 and store.special == ("cls",)
    assert store.n_images == 48 and store.prefix(3).shape == (1, 192)
    maps = store.concept_maps()
    assert maps.shape == (48, len(synthetic.CONCEPTS), 14, 14)
    entry = store.image_entry(7)
    image, label, expected = synthetic.draw_image(0, entry.index, 14)  # the same objects, rasterised at 14x14
    assert np.array_equal(maps[7], expected) and label == entry.label
    assert np.array_equal(image, synthetic.draw_image(0, entry.index)[0]), "the pixels do not depend on the grid"


def test_attribution_over_196_patches_splices_exactly(imported_lineage):
    ws, _, sae = imported_lineage
    index = open_index_for(ws, sae)
    bench = Workbench(ws, index)
    result = bench.attribute(5, top=0)
    assert result.patch_grid.shape == (14, 14)
    assert index.meta.summary.concepts == len(index.concepts) > 0, "concepts are scored on the 14x14 maps"
    x = torch.from_numpy(index.store.image(5).astype(np.float32))
    prefix = torch.from_numpy(index.store.prefix(5).astype(np.float32))[None]
    with torch.no_grad():
        clean = bench.model.run_from(index.store.hook, x[None], prefix)[0]
    assert torch.allclose(torch.from_numpy(result.logits), clean, atol=1e-5)  # the SAE with its error term is x
    assert all(f["exact_effect"] is not None for f in result.features)  # top 0: every active feature checked


async def walk_to_the_last_patch(ws, size) -> str:
    from vitsae_tui.tui.app import VitsaeApp

    app = VitsaeApp(ws.root)
    async with app.run_test(size=size) as pilot:
        screen = await open_browser(pilot, app)
        for key in ["right"] * 13 + ["down"] * 13:
            await pilot.press(key)
        await wait_for(pilot, lambda: screen.cursor == 195, timeout_s=10)
        await pilot.press("1")
        await wait_for(pilot, lambda: screen.feature is not None, timeout_s=10)
        await pilot.pause(0.3)
        return str(screen.query_one("#image-title", Static).render())


async def test_the_browser_walks_the_14x14_grid(imported_lineage):
    ws, _, _ = imported_lineage
    for size in ((80, 24), (120, 40)):
        title = await walk_to_the_last_patch(ws, size)
        assert "patch 195 (row 13, col 13)" in title and "heatmap of" in title, (size, title)


def test_a_headless_backbone_gets_a_probe_from_its_labelled_set_and_spliced_metrics_from_it(tmp_path):
    from vitsae_tui.engine import model_run
    from vitsae_tui.engine.activation_set.probe import read_probe
    from vitsae_tui.engine.workspace import read_status

    torch.manual_seed(0)
    library = timm.create_model("vit_tiny_patch16_224", depth=2, num_classes=0)
    save_file(library.state_dict(), str(tmp_path / "headless.safetensors"))
    ws = Workspace(tmp_path / "ws")
    spec = "timm:vit_tiny_patch16_224"
    run("import-model", ImportModelConfig(spec=spec, weights=str(tmp_path / "headless.safetensors"), name="dino"), ws)
    data = DataConfig(n_train=140, n_val=20)  # three batches of probe features: a stop lands between two
    stop = threading.Event()

    def stop_at_the_probe(event):
        if getattr(event, "unit", "") == "images (probe features)":
            stop.set()

    collect = CollectConfig(model="dino", data=data, batch_size=35)
    train = REGISTRY["collect"].run(collect, ws, stop_at_the_probe, stop).run_dir
    assert read_status(train)["state"] == "finished" and read_probe(train) is None, "a stop spares the whole set"
    assert run("collect", collect, ws).run_dir == train  # the same command fits the probe
    run("collect", CollectConfig(model="dino", data=data, split="val", batch_size=35), ws)
    weight, _, info = read_probe(train)
    assert weight.shape == (len(synthetic.CLASS_NAMES), 192) and info.n_val == 14 and info.n_train == 126
    assert read_status(train)["probe_val_accuracy"] == info.val_accuracy
    loaded = model_run.load_model(ws, "dino", classes_of=data)
    assert loaded.has_head and loaded.class_names == tuple(synthetic.CLASS_NAMES)
    sae = SAETrainConfig(activations=train.name, expansion=2, tokens=12_000, batch_size=1024, device="cpu")
    status = read_status(run("train-sae", sae, ws).run_dir)
    assert status["eval_images"] == 20 and np.isfinite(status["eval_kl"]), "spliced-in metrics read the probe"


async def test_a_model_is_imported_from_the_app_by_typing_its_spec(tmp_path):
    from textual.widgets import Input

    from vitsae_tui.engine.models import imported
    from vitsae_tui.tui.app import VitsaeApp

    torch.manual_seed(0)
    save_file(timm.create_model("vit_tiny_patch16_224", depth=2).state_dict(), str(tmp_path / "vit.safetensors"))
    app = VitsaeApp(tmp_path / "ws")
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("m")
        await wait_for(pilot, lambda: app.current_mode == "import-model", timeout_s=10)
        screen = app.screen
        screen.query_one("#spec", Input).focus()
        await pilot.press(*"timm:vit_tiny_patch16_224")  # every letter typed, none taken as a shortcut
        screen.query_one("#weights", Input).value = str(tmp_path / "vit.safetensors")
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: "done: models/" in str(screen.query_one("#summary", Static).render()), 60)
    run_dir = tmp_path / "ws" / "models" / "vit_tiny_patch16_224-1"
    assert imported.read_record(run_dir).spec == "timm:vit_tiny_patch16_224"
