import pytest
import torch

from vitsae_tui.engine import config as config_mod
from vitsae_tui.engine.models.native import VisionTransformerClassifier, default_hook, hook_names


@pytest.fixture(scope="module", params=["demo", "seed"])
def model(request):
    torch.manual_seed(0)
    return VisionTransformerClassifier(config_mod.preset(request.param).model).eval()


def test_output_and_hook_shapes(model):
    cfg = model.cfg
    images = torch.randn(2, 3, 224, 224)
    assert model(images).shape == (2, cfg.n_classes)
    names = model.hook_points()
    for i in range(cfg.n_layer):
        assert f"blocks.{i}.resid_pre" in names and f"blocks.{i}.resid_post" in names
    captured = {}
    with model.hooks({n: (lambda act, n=n: captured.__setitem__(n, act)) for n in names}):
        model(images)
    assert all(captured[n].shape == (2, 36, cfg.n_embd) for n in names)


def test_hook_points_return_exactly_the_block_outputs(model):
    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        fmap = model.features(images)
        x = fmap.flatten(2).transpose(1, 2)
        outputs = []
        for block in model.blocks:
            x = block(x)
            outputs.append(x)
        for i, expected in enumerate(outputs):
            assert torch.equal(model.run_to(images, f"blocks.{i}.resid_post"), expected)
        assert torch.equal(model.run_to(images, "blocks.0.resid_pre"), fmap.flatten(2).transpose(1, 2))
        assert torch.allclose(model.head(model.ln_f(outputs[-1]).flatten(1)), model(images), atol=1e-5)


def test_tokens_are_the_feature_grid_in_row_major_order(model):
    images = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        fmap = model.features(images)  # (1, C, 6, 6)
        tokens = model.run_to(images, "tokens")
    assert torch.equal(tokens[0, 1 * 6 + 4], fmap[0, :, 1, 4])


def test_replacing_an_activation_changes_the_output_and_identity_does_not(model):
    hook = default_hook(model.cfg)
    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        clean = model(images)
        same = model.run_with_replacement(images, hook, lambda act: act.clone())
        zeroed = model.run_with_replacement(images, hook, torch.zeros_like)
        again = model(images)
    assert torch.allclose(clean, same)
    assert not torch.allclose(clean, zeroed)
    assert torch.equal(clean, again), "hooks must be removed after the block"


def test_default_hook_follows_the_reference():
    assert default_hook(config_mod.preset("seed").model) == "blocks.6.resid_post"
    assert default_hook(config_mod.preset("demo").model) == "blocks.1.resid_post"


def test_unknown_hook_names_the_choices(model):
    with pytest.raises(ValueError, match="blocks.0.resid_post"):
        model.hook_module("blocks.99.resid_post")


def test_hook_names_from_the_config_match_the_built_model(model):
    assert hook_names(model.cfg) == model.hook_points()


def test_running_from_a_hook_reproduces_the_full_forward(model):
    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        logits = model(images)
        for hook in model.hook_points():
            assert torch.allclose(model.run_from(hook, model.run_to(images, hook)), logits, atol=1e-5), hook
