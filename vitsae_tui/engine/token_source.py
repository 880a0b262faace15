"""Feeding an activation set to SAE training: shuffled float32 token batches on a device, resident or prefetched."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator

import numpy as np
import torch

from vitsae_tui.engine.activation_set import ActivationSet, StoreError


class TokenSource:
    """Shuffled float32 token batches on a device: the whole set resident when it fits, else streamed with prefetch.

    Under data parallelism (`part`, a rank's share of a global batch) each rank gets its slice of the same global
    batches; `epoch` yields (local batch, global batch size).
    """

    def __init__(
        self,
        store: ActivationSet,
        device: torch.device,
        batch_size: int,
        seed: int,
        resident: bool | None = None,
        resident_budget_bytes: int | None = None,
        heldout_every: int = 0,
        part: Callable[[int], slice] | None = None,
    ):
        self.store, self.device, self.batch_size, self.seed = store, device, batch_size, seed
        self.heldout_every = heldout_every
        self.part = part or (lambda n: slice(0, n))
        image_ids = np.arange(store.n_tokens) // store.tokens_per_image
        keep = image_ids % heldout_every != heldout_every - 1 if heldout_every else np.ones(store.n_tokens, dtype=bool)
        self.n_train_tokens = int(keep.sum())
        if resident is None:
            resident = store.nbytes <= (
                resident_budget_bytes if resident_budget_bytes is not None else _resident_budget(device)
            )
        self.resident = resident
        self.tokens = None
        if resident:
            tokens = store.load_all()[keep]
            if not np.isfinite(tokens).all():  # statistics catch collected NaNs; this catches a shard changed since
                raise StoreError(f"activations/{store.path.name} holds NaN or infinite values; collect it again")
            self.tokens = torch.from_numpy(tokens).to(device)

    def batches_per_epoch(self) -> int:
        return max(1, self.n_train_tokens // self.batch_size)

    @property
    def tokens_per_step(self) -> int:
        """Every step's tokens: a full batch (an epoch's short tail batch is dropped), or the whole set when it is
        smaller than one batch; so tokens trained = steps x tokens_per_step, as the log says."""
        return min(self.batch_size, self.n_train_tokens)

    def epoch(self, epoch: int, skip_batches: int = 0) -> Iterator[tuple[torch.Tensor, int]]:
        """(float32 local batch, global batch size) pairs; skip_batches resumes mid-epoch on the same order."""
        end = self.batches_per_epoch() * self.tokens_per_step
        sizes = (self.tokens_per_step for _ in range(skip_batches * self.batch_size, end, self.batch_size))
        if self.tokens is not None:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            order = torch.randperm(len(self.tokens), generator=generator).to(self.device)
            for b, n_global in zip(range(skip_batches * self.batch_size, len(order), self.batch_size), sizes):
                mine = self.part(n_global)
                yield self.tokens[order[b + mine.start : b + mine.stop]].float(), n_global
            return
        batches = self.store.shuffled_batches(
            self.batch_size, self.seed, epoch, heldout_every=self.heldout_every, part=self.part
        )
        for _ in range(skip_batches):
            next(batches, None)
        yield from zip(prefetch(batches, self.device), sizes)


def _resident_budget(device: torch.device) -> int:
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free * 0.5)
    return 4 << 30  # host memory: keep sets up to 4 GiB in RAM, stream larger ones


def prefetch(batches: Iterator[np.ndarray], device: torch.device, depth: int = 4) -> Iterator[torch.Tensor]:
    """Read and copy batches in a background thread (pinned memory on CUDA) so the device never waits on disk."""
    slots: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    failure: list[BaseException] = []

    def produce() -> None:
        try:
            for batch in batches:
                tensor = torch.from_numpy(np.ascontiguousarray(batch))
                if device.type == "cuda":
                    tensor = tensor.pin_memory()
                slots.put(tensor)
        except BaseException as e:
            failure.append(e)
        finally:
            slots.put(done)

    thread = threading.Thread(target=produce, name="token-prefetch", daemon=True)
    thread.start()
    while True:
        item = slots.get()
        if item is done:
            break
        yield item.to(device, non_blocking=True).float()
    thread.join()
    if failure:
        raise failure[0]
