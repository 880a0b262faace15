"""A library's model as a model run: `import.json` records the spec, the library's version, the weights' SHA-256, the
preprocessing and the hook points; `best.pt` holds the library model's own state dict."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

from vitsae_tui.engine import config as config_mod
from vitsae_tui.engine.errors import UserError
from vitsae_tui.engine.models import Preprocess
from vitsae_tui.engine.workspace import WorkspaceError, read_json

RECORD = "import.json"
ADAPTERS = {
    "timm": "vitsae_tui.engine.models.timm_models",
    "torchvision": "vitsae_tui.engine.models.torchvision_models",
    "open_clip": "vitsae_tui.engine.models.open_clip_models",
    "hf": "vitsae_tui.engine.models.hf_models",
}
PACKAGES = {"timm": "timm", "torchvision": "torchvision", "open_clip": "open_clip", "hf": "transformers"}
PIP_NAMES = {**PACKAGES, "open_clip": "open_clip_torch"}
# every adapter module has: VERSION, unknown(name), build(name, state), has_head(model), supports(model),
# wrap(model, name) -> StagedModel and class_names(model, name)


class ModelImportError(UserError, RuntimeError):
    """A model that cannot be imported; the message says what to do."""


@dataclass(frozen=True)
class ImportRecord:
    """import.json: what a model run was imported from."""

    spec: str
    library_version: str
    weights: str
    """where the weights came from: the file given, or the library's download"""
    weights_sha256: str
    """SHA-256 of the weights as given (the file), or of best.pt when the library downloaded them"""
    preprocess: Preprocess
    hooks: tuple[str, ...]
    default_hook: str
    n_classes: int
    """classes of its own head; 0 for a headless backbone, which gets a linear probe from each labelled set"""

    def validate(self) -> None:
        self.preprocess.validate()
        if self.default_hook not in self.hooks or not 0 <= self.n_classes <= 1_000_000:
            raise config_mod.ConfigError("a default hook that is not among the hooks, or an absurd class count")


def is_imported(run_dir: Path) -> bool:
    return (run_dir / RECORD).exists()


def read_record(run_dir: Path) -> ImportRecord:
    where = f"models/{run_dir.name}/{RECORD}"
    try:
        return config_mod.from_dict(ImportRecord, read_json(run_dir / RECORD), where)
    except config_mod.ConfigError as e:
        raise WorkspaceError(f"{e}; import the model again") from None


def adapter(library: str):
    """The adapter module of a library, or one sentence naming the extra to install."""
    if library not in ADAPTERS:
        raise ModelImportError(f"{library!r} is not a supported library; use one of {', '.join(ADAPTERS)}")
    try:
        return importlib.import_module(ADAPTERS[library])
    except ModuleNotFoundError as e:
        if e.name != PACKAGES[library]:
            raise
        raise ModelImportError(
            f'{library} is not installed; install the models extra (pip install -e ".[models]") or pip install '
            f"{PIP_NAMES[library]}"
        ) from None


def build(record_or_spec: ImportRecord | str, state):
    """The library model (eval mode) and its StagedModel wrapper, from a state dict (None: the library's download)."""
    spec = record_or_spec if isinstance(record_or_spec, str) else record_or_spec.spec
    library, _, name = spec.partition(":")
    module = adapter(library)
    reason = module.unknown(name)
    if reason:
        raise ModelImportError(reason)
    try:
        model = module.build(name, state)
    except (RuntimeError, KeyError, ValueError, TypeError) as e:
        if state is None:
            raise
        first_line = (str(e).splitlines() or [""])[0][:160]
        raise ModelImportError(
            f"the weights do not fit {spec} ({type(e).__name__}: {first_line}); pass the weights of that very model"
        ) from None
    reason = module.supports(model)
    if reason:
        raise ModelImportError(f"{spec}: {reason}")
    wrapped = module.wrap(model, name)
    return model.eval(), wrapped.eval()


def has_head(spec: str, model) -> bool:
    return adapter(spec.partition(":")[0]).has_head(model)


def class_names(spec: str, model) -> tuple[str, ...]:
    library, _, name = spec.partition(":")
    module = adapter(library)
    return module.class_names(model, name)


def default_hook(hooks: list[str]) -> str:
    """The residual stream near the middle of a transformer (as for our own model), a CNN's third stage."""
    if "layer3" in hooks:
        return "layer3"
    n_blocks = sum(1 for h in hooks if h.endswith(".resid_post"))
    return f"blocks.{(3 * n_blocks) // 8}.resid_post"
