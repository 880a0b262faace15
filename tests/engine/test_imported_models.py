"""Library models imported as model runs: small randomly initialised timm and torchvision models saved to files,
imported with --weights, then read through our hook protocol exactly as the library computes them."""

import os
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch
from PIL import Image

from vitsae_tui.engine import model_run
from vitsae_tui.engine.config import ImportModelConfig
from vitsae_tui.engine.data import normalize, to_model_pixels
from vitsae_tui.engine.errors import StageError
from vitsae_tui.engine.stages import import_model

timm = pytest.importorskip("timm", reason="the models extra (timm) is not installed")
torchvision = pytest.importorskip("torchvision")

ODD_SIZES = [(300, 200), (199, 333), (640, 481), (225, 225), (1000, 250)]


def run_import(ws, spec: str, weights, **kwargs):
    return import_model.run(
        ImportModelConfig(spec=spec, weights=str(weights), **kwargs), ws, lambda e: None, threading.Event()
    )


def tiny_vit():
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=2).eval()


def small_tv_vit():
    from torchvision.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    return VisionTransformer(224, 32, num_layers=2, num_heads=12, hidden_dim=768, mlp_dim=3072).eval()


TINY_CLIP = {  # an open_clip config of our own: a 2-block ViT-B/32-shaped tower, small enough for a test
    "embed_dim": 64,
    "vision_cfg": {"image_size": 224, "layers": 2, "width": 96, "patch_size": 32, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1},
}


def tiny_clip_model():
    import json
    import tempfile
    from pathlib import Path

    import open_clip

    if "vitsae-tiny-clip" not in open_clip.list_models():
        path = Path(tempfile.mkdtemp()) / "vitsae-tiny-clip.json"
        path.write_text(json.dumps(TINY_CLIP))
        open_clip.add_model_config(path)
    torch.manual_seed(0)
    return open_clip.create_model("vitsae-tiny-clip").eval()


def tiny_clip_tower():
    return tiny_clip_model().visual


def resnet18():
    torch.manual_seed(0)
    return torchvision.models.resnet18().eval()


def save(model, path):
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(model.state_dict(), str(path))
    else:
        torch.save(model.state_dict(), path)
    return path


CASES = {
    # spec, library model, file, the library's own module at a hook, our name for it
    "timm vit": (
        "timm:vit_tiny_patch16_224",
        tiny_vit,
        "vit.safetensors",
        lambda m: m.blocks[0],
        "blocks.0.resid_post",
    ),
    "torchvision vit": (
        "torchvision:vit_b_32",
        small_tv_vit,
        "tvvit.pt",
        lambda m: m.encoder.layers[1],
        "blocks.1.resid_post",
    ),
    "torchvision resnet": ("torchvision:resnet18", resnet18, "resnet.pt", lambda m: m.layer3, "layer3"),
    "open_clip tower": (
        "open_clip:vitsae-tiny-clip",
        tiny_clip_tower,
        "clip.pt",
        lambda m: m.transformer.resblocks[0],
        "blocks.0.resid_post",
    ),
}
GRIDS = {"timm vit": (14, 14), "torchvision vit": (7, 7), "torchvision resnet": (14, 14), "open_clip tower": (7, 7)}


@pytest.mark.parametrize("case", list(CASES))
def test_an_imported_model_reproduces_the_library_forward_at_every_hook(workspace, tmp_path, case):
    spec, make, file, library_module, hook = CASES[case]
    library = make()
    result = run_import(workspace, spec, save(library, tmp_path / file))
    loaded = model_run.load_model(workspace, result.run_dir.name)
    model = loaded.model
    images = torch.randn(2, 3, 224, 224)
    captured = {}
    handle = library_module(library).register_forward_hook(lambda _m, _i, out: captured.setdefault("act", out))
    with torch.no_grad():
        expected = library(images)
        handle.remove()
        assert torch.allclose(model(images), expected, atol=1e-5)
        act = model.run_to(images, hook)
        library_act = captured["act"]
        if library_act.dim() == 4:  # a CNN's map: our tokens are its positions in row-major order
            library_act = library_act.flatten(2).transpose(1, 2)
        assert torch.equal(act, library_act)
        for name in model.hook_points():
            assert torch.allclose(model.run_from(name, model.run_to(images, name)), expected, atol=1e-5), name
    layout = model.token_layout(hook)
    assert act.shape[1] == layout.n_special + layout.n_patches
    assert layout.grid == GRIDS[case]
    if case == "open_clip tower":  # an image tower: its output is the embedding, its classes come from a probe
        assert not loaded.has_head and expected.shape == (2, 64)
    else:
        assert loaded.class_names[:2] == ("tench", "goldfish") and len(loaded.class_names) == 1000


def test_special_tokens_and_grids_are_named_by_the_adapter(workspace, tmp_path):
    model = model_run.load_model(
        workspace,
        run_import(workspace, *CASES["timm vit"][:1], save(tiny_vit(), tmp_path / "v.safetensors")).run_dir.name,
    ).model
    assert model.token_layout("blocks.1.resid_post").special == ("cls",)
    assert model.hook_points() == [
        "tokens",
        "blocks.0.resid_pre",
        "blocks.0.resid_post",
        "blocks.1.resid_pre",
        "blocks.1.resid_post",
    ]
    resnet = model_run.load_model(
        workspace, run_import(workspace, "torchvision:resnet18", save(resnet18(), tmp_path / "r.pt")).run_dir.name
    ).model
    grids = {hook: resnet.token_layout(hook).grid for hook in resnet.hook_points()}
    assert grids == {"stem": (56, 56), "layer1": (56, 56), "layer2": (28, 28), "layer3": (14, 14), "layer4": (7, 7)}


def odd_images():
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in ODD_SIZES]


def ours(image, preprocess) -> torch.Tensor:
    pixels = torch.from_numpy(to_model_pixels(image, preprocess).copy()).permute(2, 0, 1)[None]
    return normalize(pixels, preprocess)[0]


def test_our_preprocessing_equals_timms_own_transform(workspace, tmp_path):
    library = tiny_vit()
    model = model_run.load_model(
        workspace,
        run_import(workspace, "timm:vit_tiny_patch16_224", save(library, tmp_path / "v.safetensors")).run_dir.name,
    ).model
    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=library))
    for image in odd_images():
        assert torch.allclose(ours(image, model.preprocess), transform(image), atol=1e-6)


def test_our_preprocessing_equals_torchvisions_weights_transform(workspace, tmp_path):
    from torchvision.models import get_model_weights

    model = model_run.load_model(
        workspace, run_import(workspace, "torchvision:resnet18", save(resnet18(), tmp_path / "r.pt")).run_dir.name
    ).model
    transform = get_model_weights("resnet18").DEFAULT.transforms()
    for image in odd_images():
        assert torch.allclose(ours(image, model.preprocess), transform(image), atol=1e-6)


def test_our_preprocessing_equals_open_clips_transform_and_a_whole_clip_checkpoint_imports(workspace, tmp_path):
    import open_clip

    clip = tiny_clip_model()
    run = run_import(workspace, "open_clip:vitsae-tiny-clip", save(clip, tmp_path / "whole.pt"))  # visual.* keys
    model = model_run.load_model(workspace, run.run_dir.name).model
    _, _, transform = open_clip.create_model_and_transforms("vitsae-tiny-clip")
    for image in odd_images():
        assert torch.allclose(ours(image, model.preprocess), transform(image), atol=1e-6)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.allclose(model(x), clip.encode_image(x), atol=1e-5)


def test_the_record_names_the_spec_version_hash_and_preprocessing(workspace, tmp_path):
    from vitsae_tui.engine.models import imported
    from vitsae_tui.engine.workspace import file_sha256

    weights = save(tiny_vit(), tmp_path / "v.safetensors")
    run_dir = run_import(workspace, "timm:vit_tiny_patch16_224", weights, name="mine").run_dir
    assert run_dir.name == "mine"
    record = imported.read_record(run_dir)
    assert record.spec == "timm:vit_tiny_patch16_224" and record.library_version == timm.__version__
    assert record.weights_sha256 == file_sha256(weights)
    assert (record.preprocess.size, record.preprocess.resize, record.preprocess.interpolation) == (224, 248, "bicubic")
    assert record.preprocess.mean == (0.5, 0.5, 0.5) and record.n_classes == 1000


def test_bad_imports_are_one_sentence_and_leave_nothing_behind(workspace, tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint at all")
    resnet_weights = save(resnet18(), tmp_path / "r.pt")
    cases = [
        (ImportModelConfig(spec="timm:vit_tiny_patch16_224", weights=str(junk)), "could not be read as weights"),
        (ImportModelConfig(spec="timm:vit_tiny_patch16_224", weights=str(tmp_path / "nope.pt")), "is not a file"),
        (ImportModelConfig(spec="timm:vit_tiny_patch16_224", weights=str(resnet_weights)), "do not fit"),
        (ImportModelConfig(spec="timm:no_such_model_anywhere", weights=str(resnet_weights)), "timm has no model"),
        (ImportModelConfig(spec="torchvision:convnext_tiny", weights=str(resnet_weights)), "not a torchvision ViT"),
    ]
    for cfg, expected in cases:
        with pytest.raises(StageError, match=expected) as caught:
            import_model.run(cfg, workspace, lambda e: None, threading.Event())
        assert "\n" not in str(caught.value)
    # the real download path, told to stay offline (huggingface_hub reads the variable when first imported)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "vitsae_tui", "--workspace", str(workspace.root), "import-model"]
    offline = subprocess.run([*command, "timm:vit_tiny_patch16_224"], capture_output=True, text=True, env=env)
    assert offline.returncode == 1 and "pass --weights FILE" in offline.stderr and "Traceback" not in offline.stderr
    assert not any(workspace.kind_dir("models").iterdir()), "a failed import leaves no run"


def test_a_missing_library_names_the_extra_to_install(workspace, monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # as if it were not installed
    monkeypatch.delitem(sys.modules, "vitsae_tui.engine.models.timm_models", raising=False)
    with pytest.raises(StageError, match=r'pip install -e "\.\[models\]"'):
        import_model.run(
            ImportModelConfig(spec="timm:vit_tiny_patch16_224"), workspace, lambda e: None, threading.Event()
        )


def test_the_probe_reads_raw_features_and_separates_separable_classes():
    from vitsae_tui.engine.models.probe import fit_probe

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 300)
    centres = rng.normal(0, 1, (3, 16)) * 4
    features = torch.from_numpy(centres[labels] + rng.normal(0, 1, (300, 16)) + 50.0)  # far from zero, unscaled
    fit = fit_probe(features.float(), labels, 3)
    assert fit.n_val == 30 and fit.n_train == 270
    assert fit.val_accuracy == 1.0 and fit.train_accuracy == 1.0
    logits = features.float() @ fit.weight.t() + fit.bias  # the standardisation is folded into the weights
    assert (logits.argmax(1).numpy() == labels).mean() == 1.0


def test_a_headless_backbone_has_pooled_outputs_and_refuses_logits_without_a_probe(workspace, tmp_path):
    from vitsae_tui.engine.config import DataConfig
    from vitsae_tui.engine.workspace import WorkspaceError

    torch.manual_seed(0)
    library = timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=2, num_classes=0).eval()
    run = run_import(workspace, "timm:vit_tiny_patch16_224", save(library, tmp_path / "h.safetensors")).run_dir.name
    loaded = model_run.load_model(workspace, run)
    assert not loaded.has_head and loaded.class_names == ()
    with torch.no_grad():
        assert torch.allclose(loaded.model(torch.zeros(1, 3, 224, 224)), library(torch.zeros(1, 3, 224, 224)))
    with pytest.raises(WorkspaceError, match="no classification head"):
        model_run.load_model(workspace, run, classes_of=DataConfig())


def test_collect_announces_the_bytes_per_image_and_the_whole_datasets_size():
    from types import SimpleNamespace

    from vitsae_tui.engine.stages.collect import _size_line

    vit_b_16 = SimpleNamespace(tokens_per_image=196, special=("cls",), d_model=768, dtype="float16")
    line = _size_line(vit_b_16, 1000, 1_281_167)  # ImageNet-1k's training images through ViT-B/16
    per_image = 197 * 768 * 2 + 112 * 112 * 3
    assert f"{per_image / 1000:.1f} KB per image" in line and "all 1,281,167 images: 435.9 GB" in line


def tiny_dinov2(folder, registers: int = 0):
    """A 2-layer DINOv2 (patch 14: a 16x16 grid at 224) and its image processor, written as a hub repo would be."""
    from transformers import (
        BitImageProcessor,
        Dinov2Config,
        Dinov2Model,
        Dinov2WithRegistersConfig,
        Dinov2WithRegistersModel,
    )

    torch.manual_seed(0)
    shape = dict(hidden_size=96, num_hidden_layers=2, num_attention_heads=3, intermediate_size=192, patch_size=14)
    if registers:
        model = Dinov2WithRegistersModel(Dinov2WithRegistersConfig(num_register_tokens=registers, **shape))
    else:
        model = Dinov2Model(Dinov2Config(**shape))
    model.eval().save_pretrained(folder)
    BitImageProcessor(
        size={"shortest_edge": 256},
        crop_size={"height": 224, "width": 224},
        resample=3,
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
    ).save_pretrained(folder)
    return model


@pytest.mark.parametrize("registers", [0, 4])
def test_a_hugging_face_dinov2_imports_from_a_folder_and_from_weights(workspace, tmp_path, registers):
    from transformers import AutoImageProcessor

    library = tiny_dinov2(tmp_path / "repo", registers)
    spec = f"hf:{tmp_path / 'repo'}"
    from_folder = model_run.load_model(workspace, run_import(workspace, spec, "").run_dir.name)
    weights = save(library, tmp_path / "dino.safetensors")
    from_file = model_run.load_model(workspace, run_import(workspace, spec, weights).run_dir.name)
    images = torch.randn(2, 3, 224, 224)
    captured = {}
    handle = library.encoder.layer[1].register_forward_hook(lambda _m, _i, out: captured.setdefault("act", out))
    with torch.no_grad():
        expected = library(images).pooler_output
        handle.remove()
        for loaded in (from_folder, from_file):
            model = loaded.model
            assert not loaded.has_head and torch.allclose(model(images), expected, atol=1e-5)
            act = model.run_to(images, "blocks.1.resid_post")
            assert torch.equal(act, captured["act"][0] if isinstance(captured["act"], tuple) else captured["act"])
            for name in model.hook_points():
                assert torch.allclose(model.run_from(name, model.run_to(images, name)), expected, atol=1e-5), name
    layout = from_file.model.token_layout("blocks.1.resid_post")
    assert layout.grid == (16, 16) and layout.special == ("cls",) + ("reg",) * registers
    processor = AutoImageProcessor.from_pretrained(tmp_path / "repo", backend="pil")
    for image in odd_images():
        theirs = torch.from_numpy(processor(image, return_tensors="np")["pixel_values"][0])
        assert torch.allclose(ours(image, from_file.model.preprocess), theirs, atol=1e-5)
