"""The hook protocol every model implements, and StagedModel: a library's model read as embed -> stages -> readout."""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Callable, Iterator

import torch
import torch.nn as nn

from vitsae_tui.engine.config import ConfigError
from vitsae_tui.engine.models import Preprocess, TokenLayout


class HookPoint(nn.Identity):
    """An identity whose module path names an activation; forward hooks read or replace it."""


class StopForward(Exception):
    """Raised by a capture hook to end a forward pass once the wanted activation is in hand."""


class HookedModel(nn.Module, abc.ABC):
    """Hook points as HookPoint modules: `hooks()` reads or replaces activations, `run_to` stops at one."""

    def hook_points(self) -> list[str]:
        return [name for name, m in self.named_modules() if isinstance(m, HookPoint)]

    def hook_module(self, name: str) -> HookPoint:
        module = dict(self.named_modules()).get(name)
        if not isinstance(module, HookPoint):
            raise ConfigError(f"no hook point {name!r}; choose one of {', '.join(self.hook_points())}", "hook")
        return module

    @contextlib.contextmanager
    def hooks(self, hooks: dict[str, Callable[[torch.Tensor], torch.Tensor | None]]) -> Iterator[None]:
        """Within the block, each named activation is passed to its function; a returned tensor replaces it."""
        handles = [
            self.hook_module(name).register_forward_hook(lambda _m, _inp, out, fn=fn: fn(out))
            for name, fn in hooks.items()
        ]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def run_to(self, images: torch.Tensor, hook: str) -> torch.Tensor:
        """The activation (B, T, d) at `hook`, computing only the layers before it."""
        captured: list[torch.Tensor] = []

        def capture(act: torch.Tensor) -> None:
            captured.append(act)
            raise StopForward

        with self.hooks({hook: capture}):
            try:
                self(images)
            except StopForward:
                pass
        return captured[0]

    def run_with_replacement(
        self, images: torch.Tensor, hook: str, replace: Callable[[torch.Tensor], torch.Tensor]
    ) -> torch.Tensor:
        """Logits with the activation at `hook` replaced by `replace(activation)`."""
        with self.hooks({hook: replace}):
            return self(images)

    @abc.abstractmethod
    def token_layout(self, hook: str) -> TokenLayout:
        """The grid and special tokens of the activation at `hook`."""

    @abc.abstractmethod
    def run_from(self, hook: str, acts: torch.Tensor, prefix: torch.Tensor | None = None) -> torch.Tensor:
        """Logits when the activation at `hook` is `acts` (B, T, d); `prefix` (B, S, d), when given, holds the
        special tokens that go before patch-only `acts`."""


def with_prefix(acts: torch.Tensor, prefix: torch.Tensor | None) -> torch.Tensor:
    """`acts` (B, T, d) after the special tokens `prefix` (B, S, d), broadcast over a batch of edits of one image."""
    if prefix is None:
        return acts
    prefix = prefix.to(acts.dtype)
    if prefix.shape[0] != acts.shape[0]:
        prefix = prefix.expand(acts.shape[0], -1, -1)
    return torch.cat([prefix, acts], dim=1)


class StagedModel(HookedModel):
    """A library's model read as embed -> stages -> readout, with a hook point after the embedding and after every
    stage. Each stage maps (B, T, d) tokens to tokens; a CNN's stages see (B, C, H, W) maps, flattened to tokens
    (row-major) at the hook points, so hooks and SAEs see tokens whatever the architecture."""

    def __init__(
        self,
        embed: nn.Module,
        stages: list[nn.Module],
        readout: nn.Module,
        point_names: list[list[str]],
        preprocess: Preprocess,
        patch_grid: tuple[int, int] = (0, 0),
        special: tuple[str, ...] = (),
        spatial: bool = False,
    ):
        super().__init__()
        assert len(point_names) == len(stages) + 1, "one list of names per position, after the embedding and each stage"
        self.embed, self.stages, self.readout = embed, nn.ModuleList(stages), readout
        self.points = nn.ModuleList([HookPoint() for _ in point_names])
        self.position = {name: k for k, names in enumerate(point_names) for name in names}
        self.preprocess = preprocess
        self.patch_grid, self.special, self.spatial = patch_grid, special, spatial
        self.grids = self._grids() if spatial else {}
        self.probe: nn.Module | None = None
        """a headless backbone's linear probe over its pooled features, once a labelled set gave it one"""

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        pooled_or_logits = self.readout(x)
        return self.probe(pooled_or_logits) if self.probe is not None else pooled_or_logits

    def hook_points(self) -> list[str]:
        return list(self.position)

    def hook_module(self, name: str) -> HookPoint:
        if name not in self.position:
            raise ConfigError(f"no hook point {name!r}; choose one of {', '.join(self.position)}", "hook")
        return self.points[self.position[name]]

    def _point(self, k: int, x: torch.Tensor) -> torch.Tensor:
        if not self.spatial:
            return self.points[k](x)
        B, C, H, W = x.shape
        tokens = self.points[k](x.flatten(2).transpose(1, 2))  # (B, H*W, C)
        return tokens.transpose(1, 2).reshape(B, C, H, W)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self._point(0, self.embed(images))
        for k, stage in enumerate(self.stages, start=1):
            x = self._point(k, stage(x))
        return self._logits(x)

    @torch.no_grad()
    def _grids(self) -> dict[int, tuple[int, int]]:
        """A CNN's grid at each position, from one forward pass of a blank image at the model's input size (in eval
        mode: a training-mode pass would move the batch norms' running statistics)."""
        training = self.training
        self.eval()
        shapes: dict[int, tuple[int, int]] = {}
        x = self.embed(torch.zeros(1, 3, self.preprocess.size, self.preprocess.size))
        shapes[0] = tuple(x.shape[2:])
        for k, stage in enumerate(self.stages, start=1):
            x = stage(x)
            shapes[k] = tuple(x.shape[2:])
        self.train(training)
        return shapes

    def token_layout(self, hook: str) -> TokenLayout:
        self.hook_module(hook)
        if self.spatial:
            return TokenLayout(self.grids[self.position[hook]])
        return TokenLayout(self.patch_grid, self.special)

    def run_from(self, hook: str, acts: torch.Tensor, prefix: torch.Tensor | None = None) -> torch.Tensor:
        self.hook_module(hook)
        k = self.position[hook]
        x = with_prefix(acts, prefix)
        if self.spatial:
            H, W = self.grids[k]
            x = x.transpose(1, 2).reshape(x.shape[0], x.shape[2], H, W)
        for stage in self.stages[k:]:
            x = stage(x)
        return self._logits(x)


def transformer_points(n_blocks: int) -> list[list[str]]:
    """Hook names by position for a transformer: the tokens, then each block's output (the next one's input)."""
    names = [["tokens", "blocks.0.resid_pre"]] + [[f"blocks.{i}.resid_post"] for i in range(n_blocks)]
    for i in range(1, n_blocks):
        names[i].append(f"blocks.{i}.resid_pre")
    return names
