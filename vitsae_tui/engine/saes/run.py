"""An SAE run (`saes/<run>/`): config.json, meta.json, trainer.pt, sae.safetensors and the SAELens export."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vitsae_tui.engine import config as config_mod
from vitsae_tui.engine.config import SAETrainConfig
from vitsae_tui.engine.saes import ARCHITECTURES, architecture
from vitsae_tui.engine.workspace import (
    Workspace,
    WorkspaceError,
    atomic_torch_save,
    atomic_write_bytes,
    atomic_write_json,
    file_sha256,
    load_torch_file,
    read_json,
)

if TYPE_CHECKING:  # torch loads only when an SAE does: home and --help read runs without it
    import torch

    from vitsae_tui.engine.saes.base import SparseAutoencoder

WEIGHTS = "sae.safetensors"
MAX_D_IN = 1 << 16
MAX_D_SAE = 1 << 22
TRAINER = "trainer.pt"
META = "meta.json"


@dataclass(frozen=True)
class SAEMeta:
    """What an SAE was trained on: written once training starts, read by resume, the index and the pipeline."""

    activations: str
    """the activation set it was trained on"""
    hook: str
    """the model's hook point those activations came from"""
    d_in: int
    """width of its input (the hook's d_model)"""
    d_sae: int
    """number of features"""
    input_scale: float
    """the scalar s with E||s x||^2 = d_in, folded into the weights for raw activations"""
    model_run: str
    """the model run behind the activation set"""
    model_checkpoint_sha256: str
    """the checkpoint's hash when the set was collected"""
    architecture: str = "jumprelu"
    """jumprelu, topk or batchtopk"""

    def dump(self, run_dir: Path) -> None:
        atomic_write_json(run_dir / META, config_mod.to_dict(self))

    @classmethod
    def load(cls, run_dir: Path) -> SAEMeta:
        where = f"saes/{run_dir.name}/meta.json"
        if not (run_dir / META).is_file():
            raise WorkspaceError(f"saes/{run_dir.name} has no meta.json; train or resume the SAE first")
        return config_mod.from_dict(cls, read_json(run_dir / META), where)

    @classmethod
    def find(cls, run_dir: Path) -> SAEMeta | None:
        """The meta of a run that has one, else None (a run that never started training)."""
        return cls.load(run_dir) if (run_dir / META).is_file() else None


# what a run whose config.json predates a field trained with (its resume keeps that trajectory)
BEFORE_FIELD_EXISTED = {"pre_act_coeff": 0.0}


def read_config(ws: Workspace, run: str) -> SAETrainConfig:
    data = read_json(ws.run_dir("saes", run) / "config.json")
    if isinstance(data, dict):
        data = {**BEFORE_FIELD_EXISTED, **data}
    return config_mod.from_dict(SAETrainConfig, data, f"{run}/config.json")


def write_config(run_dir: Path, cfg: SAETrainConfig) -> None:
    atomic_write_json(run_dir / "config.json", config_mod.to_dict(cfg))


def weights_sha256(run_dir: Path) -> str:
    return file_sha256(run_dir / WEIGHTS)


def has_checkpoint(run_dir: Path) -> bool:
    return (run_dir / TRAINER).exists()


def load_checkpoint(run_dir: Path) -> dict[str, Any]:
    """trainer.pt: the SAE's and optimizer's state, step, tokens seen, last firings and the open metrics window."""
    return load_torch_file(run_dir / TRAINER)


def build_sae(cfg: SAETrainConfig, d_in: int, input_scale: float) -> SparseAutoencoder:
    """A freshly initialised SAE of the config's architecture and width."""
    return architecture(cfg.arch).sae_class().from_config(cfg, d_in, input_scale)


def save_sae(path: Path, sae: SparseAutoencoder) -> None:
    from safetensors.torch import save

    tensors = {k: v.detach().cpu().contiguous() for k, v in sae.state_dict().items()}
    atomic_write_bytes(path, save(tensors, metadata={"architecture": sae.arch}))


def load_sae(run_dir: Path, device: str | torch.device = "cpu") -> SparseAutoencoder:
    """A trained SAE from its run folder (safetensors only: no code can run on load)."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    path = run_dir / WEIGHTS
    if not path.exists():
        raise WorkspaceError(f"no sae.safetensors in saes/{run_dir.name}; train the SAE first or pick another run")
    try:
        with safe_open(str(path), "pt") as f:
            arch = (f.metadata() or {}).get("architecture", "jumprelu")  # files from before TopK carry none
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise WorkspaceError(
            f"saes/{run_dir.name}/sae.safetensors is damaged ({e}); retrain or resume the run"
        ) from None
    if arch not in ARCHITECTURES:
        raise WorkspaceError(f"saes/{run_dir.name}/sae.safetensors holds an unknown architecture; pick another run")
    d_in, d_sae = _checked_shapes(run_dir, arch, {name: tuple(tensor.shape) for name, tensor in tensors.items()})
    sae = architecture(arch).sae_class()(d_in, d_sae)
    try:
        sae.load_state_dict(tensors)
    except RuntimeError:
        raise WorkspaceError(f"saes/{run_dir.name}/sae.safetensors has inconsistent shapes; pick another run") from None
    return sae.to(device).eval()


def _checked_shapes(run_dir: Path, arch: str, shapes: dict[str, tuple[int, ...]]) -> tuple[int, int]:
    """(d_in, d_sae) of a file's tensors, refused before anything of that size is allocated unless every shape agrees
    with an SAE of its architecture and sane width and with the run's meta.json."""
    where = f"saes/{run_dir.name}/sae.safetensors"
    if set(shapes) != architecture(arch).tensors or len(shapes["W_enc"]) != 2:
        raise WorkspaceError(f"{where} does not hold a {arch} SAE; pick another run")
    d_in, d_sae = shapes["W_enc"]
    if not (0 < d_in <= MAX_D_IN and 0 < d_sae <= MAX_D_SAE):
        raise WorkspaceError(f"{where} declares an absurd size ({d_in} -> {d_sae}); retrain the SAE")
    expected = {"W_dec": (d_sae, d_in), "b_enc": (d_sae,), "b_dec": (d_in,), "threshold": (d_sae,), "input_scale": ()}
    if "k" in shapes:
        expected["k"] = ()
    if any(shapes[name] != shape for name, shape in expected.items()):
        raise WorkspaceError(f"{where} has inconsistent shapes; retrain the SAE or pick another run")
    meta = SAEMeta.find(run_dir)
    if meta is not None and (meta.d_in, meta.d_sae) != (d_in, d_sae):
        raise WorkspaceError(
            f"{where} holds a {d_in} -> {d_sae} SAE but its meta.json says {meta.d_in} -> {meta.d_sae}; "
            "retrain the SAE or pick another run"
        )
    return d_in, d_sae


def export_saelens(run_dir: Path, sae: SparseAutoencoder, hook: str, tokens_per_image: int, model_run: str) -> Path:
    """SAELens layout: cfg.json + sae_weights.safetensors, acting on raw activations (input scale folded in); TopK as
    `topk` with its k, JumpReLU and BatchTopK (a JumpReLU with one global threshold) as `jumprelu`."""
    from safetensors.torch import save

    out = run_dir / "saelens"
    out.mkdir(exist_ok=True)
    atomic_write_bytes(out / "sae_weights.safetensors", save(sae.raw_weights()))
    layer = int(hook.split(".")[1]) if hook.startswith("blocks.") else 0
    atomic_write_json(
        out / "cfg.json",
        {
            "architecture": sae.saelens_arch,
            **({"k": int(sae.k)} if sae.saelens_arch == "topk" else {}),
            "d_in": sae.d_in,
            "d_sae": sae.d_sae,
            "dtype": "float32",
            "device": "cpu",
            "apply_b_dec_to_input": False,
            "normalize_activations": "none",
            "reshape_activations": "none",
            "hook_name": hook,
            "hook_layer": layer,
            "model_name": f"vitsae-tui:{model_run}",
            "context_size": tokens_per_image,
            "prepend_bos": False,
            "metadata": {
                "hook_name": hook,
                "hook_layer": layer,
                "model_name": f"vitsae-tui:{model_run}",
                "context_size": tokens_per_image,
                "prepend_bos": False,
            },
        },
    )
    return out


def save_checkpoint(
    run_dir: Path, sae: SparseAutoencoder, optimizer, step: int, tokens_seen: int, last_fired, totals
) -> None:
    """trainer.pt holds everything resume needs in one atomic file; sae.safetensors is the weights for readers."""
    import torch

    atomic_torch_save(
        run_dir / TRAINER,
        {
            "sae": {k: v.detach().cpu() for k, v in sae.state_dict().items()},
            "optimizer": optimizer.state_dict(),
            "step": step,
            "tokens_seen": tokens_seen,
            "last_fired": last_fired.cpu(),
            "window": {k: torch.tensor(float(v), dtype=torch.float64) for k, v in totals.items()},
        },
    )
    save_sae(run_dir / WEIGHTS, sae)
