import dataclasses

import pytest

from vitsae_tui.engine import config as config_mod
from vitsae_tui.engine.config import ConfigError, DataConfig, ModelConfig, TrainModelConfig


@pytest.mark.parametrize("name", list(config_mod.PRESETS))
def test_presets_round_trip_through_json(name):
    cfg = config_mod.preset(name)
    again = config_mod.from_json(TrainModelConfig, config_mod.to_json(cfg))
    assert again == cfg
    assert isinstance(again.model.conv_channels, tuple)


def test_seed_preset_is_the_reference_architecture():
    cfg = config_mod.preset("seed")
    assert cfg.model.image_size == 224
    assert cfg.model.conv_channels == (96, 256, 384, 384, 256)
    assert (cfg.model.n_layer, cfg.model.n_head, cfg.model.n_embd, cfg.model.n_tokens) == (16, 16, 256, 36)
    assert cfg.model.dropout == 0.5 and cfg.model.mlp_ratio == 4 and not cfg.model.learned_pos_emb
    assert (cfg.lr, cfg.weight_decay, cfg.batch_size, cfg.lr_schedule) == (1e-4, 5e-4, 64, "constant")


def test_unknown_keys_and_wrong_types_are_refused_with_a_message():
    data = config_mod.to_dict(config_mod.preset("demo"))
    with pytest.raises(ConfigError, match="unknown keys"):
        config_mod.from_dict(TrainModelConfig, {**data, "epochz": 3})
    with pytest.raises(ConfigError, match=r"epochs must be int"):
        config_mod.from_dict(TrainModelConfig, {**data, "epochs": "3"})
    with pytest.raises(ConfigError, match=r"conv_channels\[1\] must be int"):
        config_mod.from_dict(TrainModelConfig, {**data, "model": {**data["model"], "conv_channels": [1, "x", 3, 4, 5]}})
    with pytest.raises(ConfigError, match="not valid JSON"):
        config_mod.from_json(TrainModelConfig, "{nope")
    with pytest.raises(ConfigError, match="unknown preset"):
        config_mod.preset("huge")


def test_missing_keys_take_defaults_and_ints_are_accepted_as_floats():
    cfg = config_mod.from_dict(TrainModelConfig, {"lr": 1, "data": {"n_train": 10}})
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float)
    assert cfg.data == dataclasses.replace(DataConfig(), n_train=10)


@pytest.mark.parametrize("cls", [DataConfig, ModelConfig, TrainModelConfig])
def test_every_field_has_a_one_line_docstring(cls):
    helps = config_mod.field_help(cls)
    for f in dataclasses.fields(cls):
        assert helps.get(f.name), f"{cls.__name__}.{f.name} has no docstring"
        assert "\n" not in helps[f.name]


def test_bad_values_are_refused():
    with pytest.raises(ConfigError, match="epochs"):
        config_mod.from_dict(TrainModelConfig, {"epochs": 0})
    with pytest.raises(ConfigError, match="lr_schedule"):
        config_mod.from_dict(TrainModelConfig, {"lr_schedule": "step"})
    with pytest.raises(ConfigError, match="divisible"):
        config_mod.from_dict(TrainModelConfig, {"model": {"conv_channels": [8, 8, 8, 8, 10], "n_head": 4}})


@pytest.mark.parametrize("bad", [float("inf"), float("-inf"), float("nan")])
def test_every_number_of_every_stage_config_must_be_finite(bad):
    from vitsae_tui.engine.stages import STAGES

    for stage in STAGES:
        for name, value in config_mod.to_dict(stage.config()).items():
            if isinstance(value, float):
                with pytest.raises(ConfigError, match=f"{name.replace('_', '-')} must be a finite number"):
                    config_mod.from_dict(stage.config, {name: bad})


def test_an_unregistered_architecture_is_refused_on_construction_replace_and_load():
    from vitsae_tui.engine.config import SAETrainConfig

    with pytest.raises(ConfigError, match="arch must be one of jumprelu, topk, batchtopk"):
        SAETrainConfig(arch="relu")
    with pytest.raises(ConfigError, match="arch must be one of"):
        dataclasses.replace(SAETrainConfig(), arch="matryoshka")
    with pytest.raises(ConfigError, match="arch must be one of jumprelu, topk, batchtopk"):
        config_mod.from_dict(SAETrainConfig, {"arch": "relu"})
    with pytest.raises(ConfigError, match="arch must be one of"):
        config_mod.sweep_configs(SAETrainConfig(), arch=("topk", "relu"))
    assert [c.sparsity for c in config_mod.sweep_configs(SAETrainConfig(), arch=("jumprelu", "topk"), k=(8,))] == [
        "λ 0.003",
        "k 8",
    ]
