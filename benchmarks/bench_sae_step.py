"""SAE training-step throughput: ours vs a naive eager autograd step vs SAELens vs the matmul floor, for JumpReLU
(our fused step) and TopK (our autograd step with AuxK; `--arch topk --k 32`).

    python benchmarks/bench_sae_step.py [--arch jumprelu|topk] [--k 32] [--d-in 256] [--d-sae 2048] [--batch 4096]
        [--device cpu] [--dtype float32]

Each contestant runs in its own subprocess (the allocator setting is process-wide), all in this one invocation, and
ratios are printed against the numbers measured here. SAELens is optional: install it in the benchmark's own
environment (`pip install sae-lens`), never as a project dependency; without it that row says so.
The floor is the five (batch x d_in x d_sae) matmuls a step needs (two forward, three backward) and nothing else.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time


def timed(step, device, warmup: int, repeats: int) -> float:
    import torch

    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


def contestant(
    name: str, d_in: int, d_sae: int, batch: int, device_name: str, dtype_name: str, repeats: int, k: int = 32
) -> float:
    import torch

    from vitsae_tui.engine.perf import tune_allocator
    from vitsae_tui.engine.saes.jumprelu import FusedStep, JumpReLUSAE

    device = torch.device(device_name)
    dtype = getattr(torch, dtype_name)
    torch.manual_seed(0)
    x = torch.randn(batch, d_in, device=device)
    if name == "floor":
        a = x.to(dtype)
        w = torch.randn(d_in, d_sae, device=device, dtype=dtype)
        z = torch.empty(batch, d_sae, device=device, dtype=dtype)

        def step():
            torch.mm(a, w, out=z)
            z @ w.t()
            z.t() @ a
            torch.mm(a, w, out=z)
            a.t() @ z
    elif name in ("ours", "ours-untuned"):
        if name == "ours" and device.type == "cpu":
            tune_allocator()
        sae = JumpReLUSAE(d_in, d_sae).to(device)
        opt = torch.optim.Adam(sae.parameters(), lr=1e-4, betas=(0.0, 0.999))
        fused = FusedStep(sae, 0.001, dtype)

        def step():
            fused(x, 1.0)
            sae.project_decoder_grad()
            opt.step()
            sae.after_step()
    elif name == "topk":
        from vitsae_tui.engine.saes.topk import TopKSAE, TopKStep

        if device.type == "cpu":
            tune_allocator()
        sae = TopKSAE(d_in, d_sae, k=k).to(device)
        opt = torch.optim.Adam(sae.parameters(), lr=1e-4, betas=(0.0, 0.999))
        topk_step = TopKStep(sae, 1 / 32)
        dead = torch.zeros(d_sae, dtype=torch.bool, device=device)
        dead[: d_sae // 8] = True  # AuxK runs, as it does whenever some latents are dead

        def step():
            topk_step(x, 0, dead)
            sae.project_decoder_grad()
            opt.step()
            sae.after_step()
    elif name == "topk-saelens":
        from sae_lens import TopKTrainingSAE, TopKTrainingSAEConfig
        from sae_lens.saes.sae import TrainStepInput

        cfg = TopKTrainingSAEConfig(d_in=d_in, d_sae=d_sae, device=device_name, dtype="float32", k=k)
        sae = TopKTrainingSAE(cfg)
        opt = torch.optim.Adam(sae.parameters(), lr=1e-4, betas=(0.0, 0.999))
        dead = torch.zeros(d_sae, dtype=torch.bool, device=device)
        dead[: d_sae // 8] = True
        n = {"step": 0}

        def step():
            opt.zero_grad()
            out = sae.training_forward_pass(
                TrainStepInput(
                    sae_in=x, coefficients={}, dead_neuron_mask=dead, n_training_steps=n["step"], is_logging_step=False
                )
            )
            out.loss.backward()
            opt.step()
            n["step"] += 1
    elif name == "naive":
        sae = JumpReLUSAE(d_in, d_sae).to(device)
        opt = torch.optim.Adam(sae.parameters(), lr=1e-4, betas=(0.0, 0.999))

        def step():
            opt.zero_grad()
            with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                out = sae.loss(x, 1.0, 0.001)
            out.loss.backward()
            sae.project_decoder_grad()
            opt.step()
            sae.normalize_decoder()
    elif name == "saelens":
        from sae_lens import JumpReLUTrainingSAE, JumpReLUTrainingSAEConfig
        from sae_lens.saes.sae import TrainStepInput

        cfg = JumpReLUTrainingSAEConfig(
            d_in=d_in,
            d_sae=d_sae,
            device=device_name,
            dtype="float32",
            jumprelu_bandwidth=0.001,
            jumprelu_init_threshold=0.001,
            l0_coefficient=1.0,
        )
        sae = JumpReLUTrainingSAE(cfg)
        opt = torch.optim.Adam(sae.parameters(), lr=1e-4, betas=(0.0, 0.999))
        n = {"step": 0}

        def step():
            opt.zero_grad()
            with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                out = sae.training_forward_pass(
                    TrainStepInput(
                        sae_in=x,
                        coefficients={"l0": 1.0},
                        dead_neuron_mask=None,
                        n_training_steps=n["step"],
                        is_logging_step=False,
                    )
                )
            out.loss.backward()
            opt.step()
            n["step"] += 1
    else:
        raise ValueError(name)
    return batch / timed(step, device, warmup=3, repeats=repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="jumprelu", choices=["jumprelu", "topk"])
    parser.add_argument("--k", type=int, default=32, help="features per token (topk)")
    parser.add_argument("--d-in", type=int, default=256)
    parser.add_argument("--d-sae", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--only", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.only:
        print(
            json.dumps(
                contestant(args.only, args.d_in, args.d_sae, args.batch, args.device, args.dtype, args.repeats, args.k)
            )
        )
        return
    print(f"{args.arch}: {args.d_in} -> {args.d_sae}, batch {args.batch}, {args.dtype}, {args.device}")
    results = {}
    names = (
        ("floor", "ours", "ours-untuned", "naive", "saelens")
        if args.arch == "jumprelu"
        else ("floor", "topk", "topk-saelens")
    )
    for name in names:
        proc = subprocess.run(
            [
                sys.executable,
                __file__,
                "--only",
                name,
                "--d-in",
                str(args.d_in),
                "--d-sae",
                str(args.d_sae),
                "--batch",
                str(args.batch),
                "--device",
                args.device,
                "--dtype",
                args.dtype,
                "--repeats",
                str(args.repeats),
                "--k",
                str(args.k),
            ],
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            reason = (proc.stderr.strip().splitlines() or ["failed"])[-1]
            print(f"{name:14s} not measured: {reason}")
            continue
        results[name] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"{name:14s} {results[name]:12,.0f} tokens/s")
    if "ours" in results and "floor" in results:
        print(f"ours / floor      {results['ours'] / results['floor']:.2f}   (target >= 0.60)")
    if "ours" in results and "saelens" in results:
        print(f"ours / SAELens    {results['ours'] / results['saelens']:.2f}   (target >= 2.0)")
    if "topk" in results and "floor" in results:
        print(f"TopK / floor      {results['topk'] / results['floor']:.2f}")
    if "topk" in results and "topk-saelens" in results:
        print(f"TopK / SAELens    {results['topk'] / results['topk-saelens']:.2f}")
    if "ours" in results and "naive" in results:
        print(f"ours / naive      {results['ours'] / results['naive']:.2f}")


if __name__ == "__main__":
    main()
