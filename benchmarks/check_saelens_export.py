"""Load an SAE run's SAELens export with SAELens itself and compare its encode/decode with ours on raw activations.

    python benchmarks/check_saelens_export.py --workspace WS --sae RUN

Needs `pip install sae-lens` in this environment (it is not a project dependency).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from sae_lens import SAE

from vitsae_tui.engine.activation_set import ActivationSet
from vitsae_tui.engine.saes.run import load_sae
from vitsae_tui.engine.workspace import Workspace, read_json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", required=True)
    parser.add_argument("--sae", required=True)
    args = parser.parse_args()
    ws = Workspace(args.workspace)
    run_dir = ws.run_dir("saes", args.sae)
    ours = load_sae(run_dir)
    theirs = SAE.load_from_disk(str(run_dir / "saelens"), device="cpu")
    store = ActivationSet(ws.run_dir("activations", read_json(run_dir / "meta.json")["activations"]))
    x_raw = torch.from_numpy(store.load_all()[:20000].astype(np.float32))
    with torch.no_grad():
        f_ours = ours.encode_raw(x_raw)
        f_theirs = theirs.encode(x_raw)
        x_hat_ours = ours.reconstruct_raw(x_raw)
        x_hat_theirs = theirs.decode(f_theirs)
    print(f"SAELens {type(theirs).__name__}: d_in {theirs.cfg.d_in}, d_sae {theirs.cfg.d_sae}")
    print(f"max |f_ours - f_saelens|         {float((f_ours - f_theirs).abs().max()):.3g}")
    print(f"max |x_hat_ours - x_hat_saelens| {float((x_hat_ours - x_hat_theirs).abs().max()):.3g}")
    print(f"active features agree on        {float(((f_ours > 0) == (f_theirs > 0)).float().mean()):.6f} of entries")


if __name__ == "__main__":
    main()
