import json
import threading

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tests.helpers import Collector, write_activation_set
from vitsae_tui.engine import events
from vitsae_tui.engine.activation_set import ActivationSet
from vitsae_tui.engine.config import SAETrainConfig
from vitsae_tui.engine.errors import StageError
from vitsae_tui.engine.saes.jumprelu import l0_coeff_at
from vitsae_tui.engine.saes.run import load_sae
from vitsae_tui.engine.stages.train_sae import input_scale, lr_at
from vitsae_tui.engine.stages.train_sae import run as train_sae
from vitsae_tui.engine.workspace import read_jsonl


def planted(ws, n_images=800, d=32, n_atoms=64, k=3, seed=0):
    """Sparse non-negative codes over a known unit-norm dictionary, plus noise."""
    rng = np.random.default_rng(seed)
    dictionary = rng.normal(size=(n_atoms, d))
    dictionary /= np.linalg.norm(dictionary, axis=1, keepdims=True)
    codes = np.zeros((n_images * 36, n_atoms))
    idx = np.array([rng.choice(n_atoms, k, replace=False) for _ in range(len(codes))])
    np.put_along_axis(codes, idx, rng.uniform(1, 3, size=idx.shape), axis=1)
    x = codes @ dictionary + rng.normal(0, 0.02, size=(len(codes), d))
    write_activation_set(ws, "planted", x.reshape(n_images, 36, d))
    return dictionary


def small_cfg(**kw):
    base = dict(
        activations="planted",
        expansion=4,
        l0_coeff=0.01,
        lr=0.01,
        batch_size=1024,
        tokens=1_000_000,
        device="cpu",
        log_every=10,
        eval_every=10**9,
        checkpoint_every=10**9,
    )
    return SAETrainConfig(**{**base, **kw})


def test_a_planted_dictionary_is_recovered(workspace):
    dictionary = planted(workspace)
    run = train_sae(small_cfg(), workspace, Collector(), threading.Event())
    decoder = load_sae(run.run_dir).W_dec.detach().numpy()
    decoder /= np.linalg.norm(decoder, axis=1, keepdims=True)
    best_cosine = (dictionary @ decoder.T).max(axis=1)
    assert best_cosine.mean() >= 0.9, best_cosine.mean()
    assert 2 <= run.metrics["l0"] <= 6  # the true codes have 3 active atoms


@pytest.mark.parametrize("pre_act_coeff", [0.0, 0.001])
def test_the_pre_activation_loss_revives_dead_features(workspace, pre_act_coeff):
    planted(workspace, n_images=200)
    # every threshold above every pre-activation: all features dead from the first step, none with a gradient
    cfg = small_cfg(theta_init=1.0, dead_window_tokens=8192, pre_act_coeff=pre_act_coeff)
    run = train_sae(cfg, workspace, Collector(), threading.Event())
    if pre_act_coeff:
        assert run.metrics["l0"] > 1 and run.metrics["fvu"] < 0.9, run.metrics
    else:
        assert run.metrics["l0"] == 0 and run.metrics["dead_fraction"] == 1.0


def test_a_run_from_before_the_pre_activation_loss_resumes_without_it(workspace):
    from vitsae_tui.engine import config as config_mod
    from vitsae_tui.engine.saes.run import read_config

    run_dir = workspace.kind_dir("saes") / "sae-1"
    run_dir.mkdir(parents=True)
    old = config_mod.to_dict(small_cfg())
    del old["pre_act_coeff"]
    (run_dir / "config.json").write_text(json.dumps(old))
    assert read_config(workspace, "sae-1").pre_act_coeff == 0.0
    (run_dir / "config.json").write_text(json.dumps({**old, "pre_act_coeff": 0.002}))
    assert read_config(workspace, "sae-1").pre_act_coeff == 0.002
    assert small_cfg().pre_act_coeff == 0.001


def test_metrics_rows_and_evaluation(workspace):
    planted(workspace, n_images=200)
    report = Collector()
    run = train_sae(small_cfg(tokens=200_000, eval_every=100), workspace, report, threading.Event())
    rows = read_jsonl(run.run_dir / "metrics.jsonl")
    steps = [r for r in rows if r["kind"] == "step"]
    evals = [r for r in rows if r["kind"] == "eval"]
    assert {"mse", "fvu", "l0", "dead_fraction", "l0_coeff", "lr", "tokens_per_s"} <= set(steps[0])
    assert steps[-1]["fvu"] < steps[0]["fvu"]
    assert [r["step"] for r in evals] == [100, 195]
    assert sum(evals[-1]["density"]["counts"]) + evals[-1]["density"]["never_fired"] == 128
    assert evals[-1]["eval_tokens"] == 10 * 36  # every 20th of 200 images is held out
    assert evals[-1]["eval_split"] == "train-heldout"
    assert any("no validation split" in e.message for e in report.of(events.Log))
    assert 0 <= steps[-1]["in_window"] <= 1 and 0 <= steps[-1]["theta_reached"] <= 1
    assert any("spliced-in evaluation is off" in e.message for e in report.of(events.Log))
    assert json.loads((run.run_dir / "status.json").read_text())["state"] == "finished"


def test_schedules():
    cfg = SAETrainConfig(tokens=4096 * 1000, lr=1.0, l0_coeff=2.0)
    assert lr_at(cfg, 0) == pytest.approx(1 / 50) and lr_at(cfg, 49) == 1.0 and lr_at(cfg, 500) == 1.0
    assert lr_at(cfg, 900) == pytest.approx(0.5) and lr_at(cfg, 1000) == 0.0
    assert l0_coeff_at(cfg, 0) == pytest.approx(0.02) and l0_coeff_at(cfg, 99) == 2.0 and l0_coeff_at(cfg, 700) == 2.0


def test_input_scale_makes_the_mean_squared_norm_one(workspace):
    planted(workspace, n_images=50)
    store = ActivationSet(workspace.run_dir("activations", "planted"))
    x = store.load_all().astype(np.float64) * input_scale(store)
    assert (x**2).sum(1).mean() == pytest.approx(1.0, rel=1e-4)


def graded(ws, name, d, n_images=400, seed=0):
    """Codes with a long tail of weak atoms, so L0 answers to lambda; the same statistics at every width d."""
    rng = np.random.default_rng(seed)
    n_atoms = 4 * d
    dictionary = rng.normal(size=(n_atoms, d))
    dictionary /= np.linalg.norm(dictionary, axis=1, keepdims=True)
    codes = np.zeros((n_images * 36, n_atoms))
    idx = np.array([rng.choice(n_atoms, 16, replace=False) for _ in range(len(codes))])
    np.put_along_axis(codes, idx, rng.pareto(2.0, size=idx.shape) + 0.1, axis=1)
    write_activation_set(ws, name, (codes @ dictionary).reshape(n_images, 36, d))


def test_one_lambda_gives_a_similar_l0_at_every_width(workspace):
    """Inputs at unit mean squared norm: lambda weighs L0 against the same MSE scale at d = 32 and d = 128 (with
    E||x||^2 = d the MSE term is 4x larger at d = 128 and L0 came out 3.9x higher)."""
    l0 = {}
    for d in (32, 128):
        graded(workspace, f"graded-{d}", d)
        cfg = small_cfg(activations=f"graded-{d}", l0_coeff=0.003, lr=2e-3, tokens=400_000)
        l0[d] = train_sae(cfg, workspace, Collector(), threading.Event()).metrics["l0"]
    assert 0.5 <= l0[128] / l0[32] <= 2.0, l0


def test_bf16_and_float32_training_reach_the_same_l0(workspace):
    planted(workspace, n_images=200)
    cfg = small_cfg(tokens=300_000)
    fp32 = train_sae(cfg, workspace, Collector(), threading.Event()).metrics
    bf16 = train_sae(cfg, workspace, Collector(), threading.Event(), emulate_bf16=True).metrics
    assert bf16["l0"] == pytest.approx(fp32["l0"], rel=0.1), (bf16["l0"], fp32["l0"])
    assert bf16["fvu"] == pytest.approx(fp32["fvu"], rel=0.2, abs=0.01)


def test_the_model_validation_split_is_what_the_sae_is_evaluated_on(workspace):
    planted(workspace, n_images=200)
    rng = np.random.default_rng(5)
    write_activation_set(workspace, "planted-val", rng.normal(size=(30, 36, 32)), split="val")
    report = Collector()
    run = train_sae(small_cfg(tokens=100_000, eval_every=50), workspace, report, threading.Event())
    evals = [r for r in read_jsonl(run.run_dir / "metrics.jsonl") if r["kind"] == "eval"]
    assert evals[-1]["eval_split"] == "val" and evals[-1]["eval_images"] == 30
    assert evals[-1]["eval_tokens"] == 30 * 36
    assert "theta" in evals[-1] and sum(evals[-1]["theta"]["counts"]) == 128
    assert any("evaluating on activations/planted-val" in e.message for e in report.of(events.Log))


def test_resume_continues_the_same_trajectory(workspace):
    planted(workspace, n_images=200)
    cfg = small_cfg(tokens=300_000, checkpoint_every=100)
    straight = train_sae(cfg, workspace, Collector(), threading.Event())
    stop = threading.Event()
    stopped = train_sae(
        cfg, workspace, Collector(stop, lambda e: isinstance(e, events.Metrics) and e.row.step >= 130), stop
    )
    assert stopped.stopped and stopped.step == 130
    resumed = train_sae(cfg, workspace, Collector(), threading.Event(), resume=stopped.run_dir.name)
    assert resumed.step == straight.step == 292
    a, b = load_file(str(straight.run_dir / "sae.safetensors")), load_file(str(resumed.run_dir / "sae.safetensors"))
    for key in a:
        assert torch.allclose(a[key], b[key], rtol=1e-4, atol=1e-5), key
    rows_a = [r for r in read_jsonl(straight.run_dir / "metrics.jsonl") if r["kind"] == "step"]
    rows_b = [r for r in read_jsonl(resumed.run_dir / "metrics.jsonl") if r["kind"] == "step"]
    assert [r["step"] for r in rows_a] == [r["step"] for r in rows_b]
    for key in ("mse", "fvu", "l0", "dead_fraction"):
        assert [r[key] for r in rows_a] == pytest.approx([r[key] for r in rows_b], rel=1e-4, abs=1e-6), key


def test_nan_stops_with_a_message_and_keeps_the_last_good_checkpoint(workspace):
    planted(workspace, n_images=100)
    data = np.load(workspace.root / "activations" / "planted" / "shard-00000.npy")
    report = Collector()
    original = torch.optim.Adam.step
    calls = {"n": 0}

    def poisoned_step(self, *args, **kwargs):
        calls["n"] += 1
        result = original(self, *args, **kwargs)
        if calls["n"] == 25:
            with torch.no_grad():
                self.param_groups[0]["params"][0].fill_(float("nan"))
        return result

    torch.optim.Adam.step = poisoned_step
    try:
        # the 26th step's loss is NaN; the check runs at the next log step (log_every 10), before any checkpoint
        with pytest.raises(StageError, match="the loss of sae-1 became nan by step 30"):
            train_sae(small_cfg(tokens=100_000, checkpoint_every=20), workspace, report, threading.Event())
    finally:
        torch.optim.Adam.step = original
    run_dir = workspace.runs("saes")[0].path
    assert json.loads((run_dir / "status.json").read_text())["state"] == "failed"
    sae = load_sae(run_dir)
    assert torch.isfinite(sae.W_dec).all()
    assert np.array_equal(np.load(workspace.root / "activations" / "planted" / "shard-00000.npy"), data)


def test_export_round_trips_on_raw_activations(workspace):
    planted(workspace, n_images=100)
    run = train_sae(small_cfg(tokens=100_000), workspace, Collector(), threading.Event())
    sae = load_sae(run.run_dir)
    cfg = json.loads((run.run_dir / "saelens" / "cfg.json").read_text())
    assert cfg["architecture"] == "jumprelu" and cfg["apply_b_dec_to_input"] is False
    assert cfg["normalize_activations"] == "none" and (cfg["d_in"], cfg["d_sae"]) == (32, 128)
    weights = load_file(str(run.run_dir / "saelens" / "sae_weights.safetensors"))
    assert set(weights) == {"W_enc", "W_dec", "b_enc", "b_dec", "threshold"}
    x_raw = torch.from_numpy(
        ActivationSet(workspace.run_dir("activations", "planted")).load_all()[:500].astype(np.float32)
    )
    z = x_raw @ weights["W_enc"] + weights["b_enc"]
    f = z * (z > weights["threshold"])
    with torch.no_grad():
        f_ours = sae.encode(x_raw * sae.input_scale)
        assert torch.allclose(f, f_ours, atol=1e-5)
        assert torch.allclose(f @ weights["W_dec"] + weights["b_dec"], sae.decode(f_ours) / sae.input_scale, atol=1e-5)
    assert (f > 0).any()


def test_missing_set_and_bad_resume_are_one_sentence(workspace):
    with pytest.raises(StageError, match="no run 'nope'"):
        train_sae(small_cfg(activations="nope"), workspace, Collector(), threading.Event())
    with pytest.raises(StageError, match="--activations"):
        train_sae(small_cfg(activations=""), workspace, Collector(), threading.Event())


def test_fidelity_metrics_against_a_direct_computation():
    from vitsae_tui.engine.saes.eval import fidelity

    clean = torch.tensor([[2.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 2.0], [2.0, 0.0, 0.0]])
    labels = torch.tensor([0, 1, 2, 1])
    same = fidelity(clean, clean, labels)
    assert same.eval_kl == pytest.approx(0.0, abs=1e-7) and same.eval_delta_ce == pytest.approx(0.0, abs=1e-7)
    assert same.eval_top1_agreement == 1.0 and same.acc_sae == same.acc_clean == 0.75
    spliced = clean.clone()
    spliced[2] = torch.tensor([0.0, 2.0, 0.0])  # image 2 now predicted as class 1
    moved = fidelity(clean, spliced, labels)
    p, q = clean.softmax(-1), spliced.softmax(-1)
    assert moved.eval_kl == pytest.approx(float((p * (p / q).log()).sum(-1).mean()), rel=1e-5)
    assert moved.eval_top1_agreement == 0.75 and moved.acc_sae == 0.5
    assert moved.acc_worst_class in (1, 2) and moved.acc_worst_class_sae == 0.0
    ce = torch.nn.functional.cross_entropy
    assert moved.eval_delta_ce == pytest.approx(float(ce(spliced, labels) - ce(clean, labels)), rel=1e-5)


@pytest.mark.parametrize("batch_size", [256, 4096])
def test_the_tokens_the_log_announces_are_the_tokens_trained(workspace, batch_size):
    """An epoch's short tail batch is dropped, so every step trains the announced batch (70,272 tokens were reported
    after a log line promised 24 steps of 4,096 on a small set)."""
    import re

    from vitsae_tui.engine.events import Finished, Log

    rng = np.random.default_rng(0)
    name = write_activation_set(workspace, "small", rng.normal(size=(50, 36, 8)).astype(np.float32))
    report = Collector()
    cfg = SAETrainConfig(activations=name, tokens=100_000, batch_size=batch_size, device="cpu", eval_every=1000)
    train_sae(cfg, workspace, report, threading.Event())
    announced = next(e.message for e in report.of(Log) if " steps of " in e.message)
    steps, per_step, total = re.search(r"(\d+) steps of (\d+) tokens \(([\d,]+) in all", announced).groups()
    assert int(steps) == 100_000 // batch_size and int(total.replace(",", "")) == int(steps) * int(per_step)
    assert report.of(Finished)[-1].summary["tokens"] == int(total.replace(",", ""))
    assert int(per_step) == min(batch_size, 50 * 36 - 2 * 36)  # images 19 and 39 are held out
