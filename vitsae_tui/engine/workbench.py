"""The patch workbench: attribute one image's prediction to SAE features and edit them, through the model itself.

Every result splices the SAE in with its error term at the hook, x' = decode(f') + (x - decode(f)), and runs the
model from there: with no edit x' = x, so the logits are the clean model's and any change is the edit's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from vitsae_tui.engine import model_run
from vitsae_tui.engine.errors import UserError

if TYPE_CHECKING:
    import torch

    from vitsae_tui.engine.feature_index import FeatureIndex
    from vitsae_tui.engine.workspace import Workspace

EXACT_TOP = 16
"""features whose attribution is checked against the exact effect of zeroing them"""
MODES = ("zero", "scale", "clamp", "add")


class WorkbenchError(UserError, ValueError):
    """An attribution or an edit that cannot be made as asked; the message says what to change."""


@dataclass(frozen=True)
class Edit:
    """What to do to some features on some patches (None: every patch)."""

    features: tuple[int, ...]
    mode: str = "zero"
    """zero, scale (by value), clamp (to value) or add (steer along the decoder direction with strength value)"""
    value: float = 0.0
    patches: tuple[int, ...] | None = None

    def describe(self) -> str:
        """One line: "×2 feature 82 on patch 5"."""
        what = {
            "zero": "zero",
            "scale": f"×{self.value:g}",
            "clamp": f"clamp to {self.value:.3f}",
            "add": f"add {self.value:.3f}",
        }
        where = (
            "every patch"
            if self.patches is None
            else f"patch{'es' * (len(self.patches) > 1)} {','.join(map(str, self.patches))}"
        )
        return (
            f"{what[self.mode]} feature{'s' * (len(self.features) > 1)} {','.join(map(str, self.features))} on {where}"
        )


@dataclass
class Attribution:
    image: int
    target: int
    """the class whose logit is attributed"""
    logits: np.ndarray  # (C,) the spliced model's, equal to the clean model's
    features: list[dict] = field(default_factory=list)
    """{feature, attribution, exact_effect} of the active features, ranked by |attribution|"""
    patch_grid: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))  # (rows, cols) sum over features
    error_share: float = 0.0
    """the error term's part of the target logit's attribution"""
    rank_correlation: float | None = None
    """Spearman correlation of attribution and exact effect over the checked features"""


@dataclass
class EditResult:
    image: int
    target: int
    edits: tuple[Edit, ...]
    logits_clean: np.ndarray
    logits_spliced: np.ndarray
    logits_after: np.ndarray
    patch_change: np.ndarray  # (rows, cols) change of the target logit when the edit is made on that patch alone


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max())
    return shifted / shifted.sum()


def spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    """Rank correlation (average ranks for ties); None with fewer than three values or a constant side."""
    if len(a) < 3:
        return None
    ranks = [np.argsort(np.argsort(v, kind="stable"), kind="stable").astype(float) for v in (a, b)]
    for v, r in zip((a, b), ranks):
        for value in np.unique(v):
            tied = v == value
            r[tied] = r[tied].mean()
    if ranks[0].std() == 0 or ranks[1].std() == 0:
        return None
    return float(np.corrcoef(ranks[0], ranks[1])[0, 1])


class Workbench:
    """One index's SAE spliced into its model, on the device of the model."""

    def __init__(self, ws: Workspace, index: FeatureIndex, device: str = "cpu"):
        import torch

        self.index = index
        provenance = index.store.provenance
        loaded = model_run.load_model(ws, provenance.model_run, provenance.checkpoint, device, provenance.data)
        if loaded.checkpoint_sha256 != provenance.checkpoint_sha256:
            raise WorkbenchError(
                f"models/{provenance.model_run} changed since activations/{index.store.path.name} was collected; "
                "collect and index again to edit features through it"
            )
        self.model = loaded.model.requires_grad_(False)  # gradients flow to the features, never into the weights
        self.class_names = tuple(loaded.class_names) or tuple(index.class_names)
        self.device = next(self.model.parameters()).device
        self.hook = index.store.hook
        self.sae = index.sae.to(self.device).requires_grad_(False)
        weights = self.sae.raw_weights()  # decoding on raw activations: the input scale folded in
        self.w_dec, self.b_dec = weights["W_dec"].to(self.device), weights["b_dec"].to(self.device)
        self.torch = torch
        self.prefix: torch.Tensor | None = None

    def _acts(self, image: int) -> torch.Tensor:
        """The image's patch activations (T, d); its special tokens (CLS, registers) become the prefix of every
        spliced pass that follows."""
        prefix = self.index.store.prefix(image)
        self.prefix = None if prefix is None else self.torch.from_numpy(prefix.astype(np.float32)).to(self.device)[None]
        return self.torch.from_numpy(self.index.store.image(image).astype(np.float32)).to(self.device)

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.sae.encode_raw(x)  # the architecture's own rule: JumpReLU, TopK or a global threshold

    def _decode(self, f: torch.Tensor) -> torch.Tensor:
        return f @ self.w_dec + self.b_dec

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C) logits of the current image's hook activations (B, T, d) or (T, d), after its special tokens."""
        return self.model.run_from(self.hook, x if x.dim() == 3 else x[None], self.prefix).float()

    def _check(self, image: int, target: int | None, logits: np.ndarray) -> int:
        if not 0 <= image < self.index.n_images:
            raise WorkbenchError(f"image {image} is outside 0..{self.index.n_images - 1}")
        if target is None:
            return int(logits.argmax())
        if not 0 <= target < len(logits):
            raise WorkbenchError(f"class {target} is outside 0..{len(logits) - 1} (the model's classes)")
        return target

    def attribute(self, image: int, target: int | None = None, top: int = EXACT_TOP) -> Attribution:
        """f · ∂logit/∂f per feature and patch at the hook (attribution patching), the error term's share, and the
        exact effect of zeroing each of the `top` strongest features (top 0: every active feature is checked)."""
        torch = self.torch
        if not 0 <= image < self.index.n_images:
            raise WorkbenchError(f"image {image} is outside 0..{self.index.n_images - 1}")
        x = self._acts(image)
        with torch.no_grad():
            f = self._encode(x)
            error = x - self._decode(f)
            clean = self._logits(x)[0]
        target = self._check(image, target, clean.cpu().numpy())
        f_leaf = f.clone().requires_grad_(True)
        error_leaf = error.clone().requires_grad_(True)
        logits = self._logits(self._decode(f_leaf) + error_leaf)[0]
        logits[target].backward()
        per_token = (f_leaf * f_leaf.grad).detach()  # (T, F): first-order effect of removing each feature there
        error_share = float((error_leaf.detach() * error_leaf.grad).sum())
        per_feature = per_token.sum(0).cpu().numpy()
        active = np.flatnonzero((f > 0).any(0).cpu().numpy())
        ranked = active[np.argsort(-np.abs(per_feature[active]), kind="stable")]
        checked = ranked if top == 0 else ranked[:top]
        exact = self._zeroing_effects(f, error, target, checked, float(logits[target].detach()))
        features = [
            {"feature": int(j), "attribution": float(per_feature[j]), "exact_effect": exact.get(int(j))} for j in ranked
        ]
        grid = self.index.grid
        return Attribution(
            image=image,
            target=target,
            logits=logits.detach().cpu().numpy(),
            features=features,
            patch_grid=per_token.sum(1).cpu().numpy().reshape(grid, grid),
            error_share=error_share,
            rank_correlation=spearman(
                np.array([per_feature[j] for j in checked]), np.array([exact[int(j)] for j in checked])
            ),
        )

    def _zeroing_effects(self, f, error, target: int, features, spliced: float) -> dict[int, float]:
        """target logit (spliced) minus the target logit with each feature zeroed on every patch, batched."""
        torch = self.torch
        effects: dict[int, float] = {}
        with torch.no_grad():
            spliced_x = self._decode(f) + error
            for start in range(0, len(features), 64):
                chunk = torch.as_tensor(features[start : start + 64], device=self.device, dtype=torch.long)
                removed = f[:, chunk].t()[:, :, None] * self.w_dec[chunk][:, None, :]  # (c, T, d)
                x = spliced_x[None] - removed
                changed = self._logits(x)[:, target]
                effects.update({int(j): spliced - float(v) for j, v in zip(chunk.tolist(), changed)})
        return effects

    def _edited(self, f: torch.Tensor, edits: tuple[Edit, ...], only_patch: int | None = None) -> torch.Tensor:
        """The hook activation change (T, d) of the edits, made one after another (on `only_patch` alone if given)."""
        torch = self.torch
        edited = f.clone()
        for edit in edits:
            patches = range(f.shape[0]) if edit.patches is None else edit.patches
            rows = torch.as_tensor(
                [p for p in patches if only_patch is None or p == only_patch], device=self.device, dtype=torch.long
            )
            if not len(rows):
                continue
            features = torch.as_tensor(edit.features, device=self.device, dtype=torch.long)
            old = edited[rows][:, features]  # (p, k)
            if edit.mode == "zero":
                new = torch.zeros_like(old)
            elif edit.mode == "scale":
                new = old * edit.value
            elif edit.mode == "clamp":
                new = torch.full_like(old, edit.value)
            else:  # add: steer along the decoder direction, firing or not
                new = old + edit.value
            edited[rows[:, None], features[None, :]] = new
        return (edited - f) @ self.w_dec

    def intervene(self, image: int, edits: Edit | tuple[Edit, ...], target: int | None = None) -> EditResult:
        """Logits before and after the edits, and each patch's share: the edits made on that patch alone."""
        torch = self.torch
        edits = (edits,) if isinstance(edits, Edit) else tuple(edits)
        for edit in edits:
            self._validate(edit)
        if not 0 <= image < self.index.n_images:
            raise WorkbenchError(f"image {image} is outside 0..{self.index.n_images - 1}")
        T = self.index.store.tokens_per_image
        touched = sorted({p for edit in edits for p in (range(T) if edit.patches is None else edit.patches)})
        x = self._acts(image)
        with torch.no_grad():
            f = self._encode(x)
            reconstruction = self._decode(f)
            spliced_x = reconstruction + (x - reconstruction)
            clean, spliced = self._logits(torch.stack([x, spliced_x]))
            target = self._check(image, target, clean.cpu().numpy())
            after = self._logits(spliced_x + self._edited(f, edits))[0]
            per_patch = torch.zeros(T, device=self.device)
            if touched:
                one_patch = torch.stack([spliced_x + self._edited(f, edits, p) for p in touched])  # (p, T, d)
                per_patch[touched] = self._logits(one_patch)[:, target] - spliced[target]
        grid = self.index.grid
        return EditResult(
            image=image,
            target=target,
            edits=edits,
            logits_clean=clean.cpu().numpy(),
            logits_spliced=spliced.cpu().numpy(),
            logits_after=after.cpu().numpy(),
            patch_change=per_patch.cpu().numpy().reshape(grid, grid),
        )

    def _validate(self, edit: Edit) -> None:
        d_sae, T = self.index.d_sae, self.index.store.tokens_per_image
        if edit.mode not in MODES:
            raise WorkbenchError(f"edit mode {edit.mode!r} is not one of {', '.join(MODES)}")
        if not edit.features:
            raise WorkbenchError("name at least one feature to edit (--feature F[,G…])")
        bad = [j for j in edit.features if not 0 <= j < d_sae]
        if bad:
            raise WorkbenchError(f"feature {bad[0]} is outside 0..{d_sae - 1}")
        if edit.patches is not None and (not edit.patches or any(not 0 <= p < T for p in edit.patches)):
            raise WorkbenchError(f"patches must be numbers in 0..{T - 1}, row by row")
        if not np.isfinite(edit.value):
            raise WorkbenchError(f"the edit's value must be a finite number, not {edit.value}")

    def sufficiency(self, attribution: Attribution, ks: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)) -> list[dict]:
        """Keep only the top-k attributed features (with and without the error term): is the prediction kept?"""
        torch = self.torch
        x = self._acts(attribution.image)
        ranked = [row["feature"] for row in attribution.features]
        rows = []
        with torch.no_grad():
            f = self._encode(x)
            error = x - self._decode(f)
            for k in ks:
                kept = torch.zeros_like(f)
                top = torch.as_tensor(ranked[:k], device=self.device, dtype=torch.long)
                kept[:, top] = f[:, top]
                logits = self._logits(torch.stack([self._decode(kept) + error, self._decode(kept)]))
                predicted = logits.argmax(-1).tolist()
                rows.append(
                    {
                        "k": k,
                        "keeps_prediction_with_error": predicted[0] == attribution.target,
                        "keeps_prediction_without_error": predicted[1] == attribution.target,
                        "target_logit_with_error": float(logits[0, attribution.target]),
                        "target_logit_without_error": float(logits[1, attribution.target]),
                    }
                )
        return rows


def resolve_class(text: str, class_names: tuple[str, ...]) -> int:
    """A class typed as its number or as its name, or the start of one name ('warm c' for 'warm circle')."""
    text = text.strip()
    if text.lstrip("-").isdigit():
        number = int(text)
        if not 0 <= number < len(class_names):
            raise WorkbenchError(f"class {number} is outside 0..{len(class_names) - 1}; type a number or a name")
        return number
    exact = [i for i, name in enumerate(class_names) if name.casefold() == text.casefold()]
    starts = [i for i, name in enumerate(class_names) if name.casefold().startswith(text.casefold())]
    found = exact or starts
    if text and len(found) == 1:
        return found[0]
    if len(found) > 1:
        names = ", ".join(class_names[i] for i in found[:6])
        raise WorkbenchError(f"{text!r} starts {len(found)} class names ({names}); type more of one, or its number")
    raise WorkbenchError(f"no class is called {text!r}; type a number from 0 to {len(class_names) - 1} or a name")


def probabilities(logits: np.ndarray) -> np.ndarray:
    return _softmax(np.asarray(logits, dtype=np.float64))
