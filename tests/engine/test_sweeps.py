"""TopK and BatchTopK SAEs, sweeps of SAEs trained in one pass, and the comparison of every SAE of a set."""

import json
import shutil
import threading

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tests.engine.test_train_sae import planted, small_cfg
from tests.helpers import Collector
from vitsae_tui.cli import main
from vitsae_tui.engine import compare, events, metrics, sweeps
from vitsae_tui.engine.config import ConfigError, sweep_configs
from vitsae_tui.engine.errors import StageError
from vitsae_tui.engine.saes.batchtopk import BatchTopKSAE
from vitsae_tui.engine.saes.eval import mean_max_cosine
from vitsae_tui.engine.saes.run import load_sae
from vitsae_tui.engine.saes.topk import TopKSAE, TopKStep, aux_k_loss
from vitsae_tui.engine.stages.train_sae import run as train_sae
from vitsae_tui.engine.stages.train_sae import run_sweep
from vitsae_tui.engine.workspace import read_jsonl


def test_topk_keeps_the_k_largest_positive_pre_activations_of_each_token():
    sae = TopKSAE(8, 32, k=3, seed=1)
    x = torch.randn(50, 8)
    f = sae.encode(x)
    z = sae.pre_acts(x)
    assert ((f > 0).sum(1) <= 3).all() and ((f > 0).sum(1) == 3).sum() > 40
    for row_f, row_z in zip(f, z):
        kept = row_f > 0
        assert torch.equal(row_f[kept], row_z[kept])
        if kept.any():  # nothing dropped is larger than anything kept
            assert row_z[~kept].max() <= row_f[kept].min()


def test_batchtopk_keeps_k_per_token_on_average_and_infers_with_its_global_threshold():
    sae = BatchTopKSAE(8, 32, k=3, seed=1)
    z = torch.randn(40, 32).relu()
    f = sae.select(z)
    assert (f > 0).sum() == 3 * 40 and (f > 0).sum(1).float().std() > 0  # tokens get different numbers of features
    assert f[f > 0].min() >= z.flatten().topk(120).values.min()
    sae.threshold.fill_(0.4)
    x = torch.randn(20, 8)
    pre = sae.pre_acts(x)
    assert torch.equal(sae.encode(x), pre * (pre > 0.4))


def test_auxk_loss_is_the_dead_latents_reconstruction_of_the_residual():
    torch.manual_seed(0)
    sae = TopKSAE(8, 32, k=2)
    z = torch.randn(10, 32)
    residual = torch.randn(10, 8)
    dead = torch.zeros(32, dtype=torch.bool)
    assert aux_k_loss(sae, z, residual, dead) == 0
    dead[:6] = True  # fewer dead than k_aux = d_in / 2 = 4? no: 6 dead, k_aux = 4
    top = z[:, :6].topk(4, dim=1)
    aux_f = torch.zeros(10, 32).scatter_(1, top.indices, top.values)
    expected = (aux_f @ sae.W_dec - residual).pow(2).sum(1).mean()
    assert torch.allclose(aux_k_loss(sae, z, residual, dead), expected)
    dead[:] = False
    dead[:2] = True  # 2 dead: k_aux = 2, scaled by 2 / 4
    top = z[:, :2]
    expected = 0.5 * (top @ sae.W_dec[:2] - residual).pow(2).sum(1).mean()
    assert torch.allclose(aux_k_loss(sae, z, residual, dead), expected)


def test_auxk_gives_dead_latents_a_gradient_and_leaves_the_rest_unchanged():
    torch.manual_seed(0)
    sae = TopKSAE(8, 32, k=2)
    x = torch.randn(64, 8)
    dead = torch.zeros(32, dtype=torch.bool)
    TopKStep(sae, aux_k_coeff=0.0)(x, 0, dead)
    without = {n: p.grad.clone() for n, p in sae.named_parameters()}
    never_kept = (sae.encode(x) == 0).all(0)
    assert (without["W_enc"][:, never_kept] == 0).all()  # a latent TopK never keeps gets no gradient on its own
    dead = never_kept.clone()
    TopKStep(sae, aux_k_coeff=1 / 32)(x, 0, dead)
    assert (sae.W_enc.grad[:, never_kept].abs().sum(0) > 0).all()
    alive = ~never_kept
    assert torch.allclose(sae.W_enc.grad[:, alive], without["W_enc"][:, alive])


def test_mean_max_cosine_against_a_direct_computation():
    w = torch.randn(300, 16)
    unit = w / w.norm(dim=1, keepdim=True)
    cosine = unit @ unit.t() - 3 * torch.eye(300)
    assert mean_max_cosine(w, rows_per_chunk=64) == pytest.approx(float(cosine.max(1).values.mean()), abs=1e-6)


def test_sweep_configs_cross_architectures_sparsities_and_widths():
    base = small_cfg()
    cfgs = sweep_configs(base, arch=("jumprelu", "topk"), l0_coeff=(0.01, 0.1), k=(4, 8, 16), expansion=(2, 4))
    assert len(cfgs) == 2 * 2 + 3 * 2
    assert {(c.arch, c.sparsity, c.expansion) for c in cfgs} >= {("jumprelu", "λ 0.1", 4), ("topk", "k 16", 2)}
    with pytest.raises(ConfigError, match="arch must be"):
        sweep_configs(base, arch=("relu",))


@pytest.mark.parametrize("arch", ["topk", "batchtopk"])
def test_topk_architectures_train_save_load_and_export(workspace, arch):
    planted(workspace, n_images=200)
    run = train_sae(small_cfg(arch=arch, k=3, tokens=300_000), workspace, Collector(), threading.Event())
    sae = load_sae(run.run_dir)
    assert sae.arch == arch and int(sae.k) == 3
    assert run.metrics["fvu"] < 0.3 and abs(run.metrics["l0"] - 3) < 1e-6  # training L0 is exactly k on average
    evals = [r for r in read_jsonl(run.run_dir / "metrics.jsonl") if r["kind"] == "eval"]
    assert 2 <= evals[-1]["eval_l0"] <= 4.5 and evals[-1]["eval_l2_ratio"] > 0.5
    cfg = json.loads((run.run_dir / "saelens" / "cfg.json").read_text())
    weights = load_file(str(run.run_dir / "saelens" / "sae_weights.safetensors"))
    x_raw = torch.randn(100, 32) * 3
    with torch.no_grad():
        ours = sae.encode_raw(x_raw)
        z = x_raw @ weights["W_enc"] + weights["b_enc"]
        if arch == "topk":
            assert cfg["architecture"] == "topk" and cfg["k"] == 3 and "threshold" not in weights
            top = z.relu().topk(3, dim=1)
            theirs = torch.zeros_like(z).scatter_(1, top.indices, top.values)
        else:  # a JumpReLU with one global threshold
            assert cfg["architecture"] == "jumprelu" and weights["threshold"].unique().numel() == 1
            theirs = z * (z > weights["threshold"])
        assert torch.allclose(ours, theirs, atol=1e-5)
        decoded = theirs @ weights["W_dec"] + weights["b_dec"]
        assert torch.allclose(decoded, sae.reconstruct_raw(x_raw), atol=1e-4)


def test_every_sae_of_a_sweep_equals_the_same_sae_trained_alone(workspace):
    planted(workspace, n_images=200)
    base = small_cfg(tokens=150_000, eval_every=60)
    cfgs = sweep_configs(base, arch=("jumprelu", "topk"), l0_coeff=(0.003, 0.03), k=(4,))
    report = Collector()
    results = run_sweep(cfgs, workspace, report, threading.Event())
    assert [r.run_dir.name for r in results] == ["sae-1", "sae-2", "sae-3"]
    record = sweeps.load(workspace, "sweep-1")
    assert record.runs == ("sae-1", "sae-2", "sae-3") and record.activations == "planted"
    alone = [train_sae(cfg, workspace, Collector(), threading.Event()) for cfg in cfgs]
    for together, solo in zip(results, alone):
        a = load_file(str(together.run_dir / "sae.safetensors"))
        b = load_file(str(solo.run_dir / "sae.safetensors"))
        for key in a:
            assert torch.equal(a[key], b[key]), (together.run_dir.name, key)
    rows = [metrics.to_json(e.row) for e in report.of(events.Metrics) if e.row.kind == "eval"]
    assert sorted({r["run"] for r in rows}) == ["sae-1", "sae-2", "sae-3"]  # every SAE is evaluated on its own
    assert results[0].metrics["l0"] > results[1].metrics["l0"]  # λ 0.003 is denser than λ 0.03


def test_a_sweep_resumes_exactly_even_when_its_checkpoints_are_at_different_steps(workspace):
    planted(workspace, n_images=200)
    cfgs = sweep_configs(small_cfg(tokens=150_000), arch=("jumprelu", "batchtopk"), k=(4,))
    straight = run_sweep(cfgs, workspace, Collector(), threading.Event())

    def stop_at(step):
        stop = threading.Event()
        return Collector(stop, lambda e: isinstance(e, events.Metrics) and e.row.step >= step), stop

    report, stop = stop_at(40)
    first = run_sweep(cfgs, workspace, report, stop)
    assert [r.step for r in first] == [40, 40] and all(r.stopped for r in first)
    behind = first[0].run_dir
    shutil.copytree(behind, workspace.root / "at-40")
    report, stop = stop_at(50)
    assert [r.step for r in run_sweep(cfgs, workspace, report, stop, resume="sweep-2")] == [50, 50]
    shutil.rmtree(behind)  # as if killed between the two SAEs' checkpoints: the first is back at step 40
    shutil.copytree(workspace.root / "at-40", behind)
    report = Collector()
    resumed = run_sweep(cfgs, workspace, report, threading.Event(), resume="sweep-2")
    assert any("resuming sae-3 at step 40" in e.message for e in report.of(events.Log))
    assert any("resuming sae-4 at step 50" in e.message for e in report.of(events.Log))
    for together, solo in zip(resumed, straight):
        a, b = load_file(str(together.run_dir / "sae.safetensors")), load_file(str(solo.run_dir / "sae.safetensors"))
        for key in a:
            assert torch.allclose(a[key], b[key], rtol=1e-4, atol=1e-5), (together.run_dir.name, key)
        steps = [r["step"] for r in read_jsonl(together.run_dir / "metrics.jsonl") if r["kind"] == "step"]
        assert steps == sorted(set(steps))  # no step logged twice


def test_compare_marks_the_pareto_set_and_prints_every_sae(workspace, capsys):
    planted(workspace, n_images=200)
    cfgs = sweep_configs(
        small_cfg(tokens=100_000, eval_every=10**9), arch=("jumprelu", "topk"), l0_coeff=(0.001, 0.1), k=(2, 6)
    )
    run_sweep(cfgs, workspace, Collector(), threading.Event())
    found = compare.points(workspace, "planted")
    assert len(found) == 4 and all("eval_kl" not in p.metrics or p.metrics["eval_kl"] >= 0 for p in found)
    for p in found:  # a point is on the frontier exactly when nothing beats it on both axes
        beaten = [
            q
            for q in found
            if q.value(metrics.EVAL_L0) <= p.value(metrics.EVAL_L0)
            and q.value(metrics.EVAL_FVU) <= p.value(metrics.EVAL_FVU)
            and q.metrics != p.metrics
        ]
        assert p.pareto == (not beaten)
    assert any(p.pareto for p in found)
    assert main(["compare", "--workspace", str(workspace.root), "--activations", "planted", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert {r["run"] for r in printed} == {"sae-1", "sae-2", "sae-3", "sae-4"}
    assert main(["compare", "--workspace", str(workspace.root), "--activations", "planted"]) == 0
    table = capsys.readouterr().out
    assert "★" in table and "topk k6 x4" in table and "jump λ0.1 x4" in table, table
    assert main(["compare", "--workspace", str(workspace.root), "--activations", "nope"]) == 1
    assert "no run 'nope'" in capsys.readouterr().err


def test_compare_refuses_to_trust_metrics_files(tmp_path):
    line = {"kind": "eval", "step": 5, "eval_l0": "[red]3", "eval_fvu": 0.1, "eval_kl": None, "eval_images": "2"}
    (tmp_path / "metrics.jsonl").write_text(json.dumps(line) + "\n")
    numbers, step = compare.latest_eval(metrics.read_rows(tmp_path / "metrics.jsonl", "train-sae"))
    assert numbers == {"eval_fvu": 0.1, "step": 5} and step == 5


def test_the_cli_trains_a_sweep_and_resumes_it_by_name(workspace, capsys):
    planted(workspace, n_images=100)
    root = str(workspace.root)
    common = ["train-sae", "--workspace", root, "--activations", "planted", "--device", "cpu", "--tokens", "60000"]
    assert main([*common, "--batch-size", "1024", "--arch", "jumprelu,topk", "--l0-coeff", "0.01,0.1", "--k", "4"]) == 0
    out = capsys.readouterr().err  # the stage's report goes to stderr
    assert "sweep-1: 3 SAEs in one pass" in out and "sae-3 (topk, k 4, x8)" in out
    assert [r.name for r in workspace.runs("saes")] == ["sae-3", "sae-2", "sae-1"]
    assert main([*common, "--resume", "sweep-1"]) == 0  # all three are complete: each is saved again, nothing trains
    assert "resuming sae-1" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="2"):
        main([*common, "--l0-coeff", "0.1,0.1"])
    assert "repeats a value" in capsys.readouterr().err
    with pytest.raises(StageError, match="must share lr"):
        sweeps.check_shared([small_cfg(), small_cfg(lr=0.5)])


@pytest.mark.parametrize("arch", ["topk", "batchtopk"])
def test_topk_saes_are_indexed_inspected_and_edited_like_jumprelu_ones(tmp_path, arch, capsys):
    from tests.helpers import make_indexed_workspace
    from vitsae_tui.engine.feature_index import FeatureIndex
    from vitsae_tui.engine.workbench import Workbench

    ws, name = make_indexed_workspace(tmp_path / "ws", arch=arch)
    index = FeatureIndex(ws, name)
    assert index.sae.arch == arch
    f = index.sae.encode_raw(torch.from_numpy(index.store.image(0).astype(np.float32)))
    if arch == "topk":
        assert ((f > 0).sum(1) <= 8).all()
    assert main(["inspect", "--workspace", str(ws.root), "--sae", name, "--image", "0", "--token", "3"]) == 0
    assert "feature" in capsys.readouterr().out
    result = Workbench(ws, index).attribute(0, None, 4)
    active = set(np.flatnonzero(f.detach().numpy().sum(0)).tolist())
    assert result.features and {d["feature"] for d in result.features} <= active  # the architecture's own code


def test_a_live_point_never_sets_the_frontier():
    def point(run, l0, fvu, live=False):
        return compare.SAEPoint(run, "topk", "k 8", 8, "running", 1, 2, {"eval_l0": l0, "eval_fvu": fvu}, live=live)

    marked = {
        p.run: p.pareto
        for p in compare.mark_pareto([point("a", 4, 0.1), point("b", 8, 0.2), point("c", 2, 0.01, True)])
    }
    assert marked == {"a": True, "b": False, "c": False}
