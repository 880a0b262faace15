"""Data parallelism under torchrun: one process per device, NCCL on CUDA and gloo on CPU, rank 0 the only writer.

Every rank draws the same global order (seeded, independent of the world size) and keeps its own slice of each
global batch, so a run gives the same weights on 1 or N processes and resumes on any number of them.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn

from vitsae_tui.engine.device import pick_device
from vitsae_tui.engine.errors import StageError, user_message

# a rank that waits longer than this for the others gives up (a dead peer usually fails the collective at once)
COLLECTIVE_TIMEOUT = timedelta(minutes=10)


class RankLost(StageError):
    """Another process of the job stopped answering (killed, crashed or its network dropped)."""


@dataclass(frozen=True)
class Ranks:
    rank: int
    world_size: int
    device: torch.device

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def local_rows(self, n_global: int) -> slice:
        """This rank's part of a global batch of n_global rows (sizes differ by at most one)."""
        base, extra = divmod(n_global, self.world_size)
        start = self.rank * base + min(self.rank, extra)
        return slice(start, start + base + (1 if self.rank < extra else 0))

    def check_divisible(self, batch_size: int) -> None:
        if batch_size % self.world_size:
            raise StageError(
                f"the batch size {batch_size} is the global batch and must divide evenly over "
                f"{self.world_size} processes; pick a multiple of {self.world_size}"
            )

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum over ranks in place (a no-op on one process)."""
        if self.enabled:
            try:
                dist.all_reduce(tensor)
            except RuntimeError as e:  # DistBackendError and gloo's connection errors are RuntimeErrors
                raise _lost(e) from None
        return tensor

    def any(self, flag: bool) -> bool:
        """Whether any rank's flag is set; every rank gets the same answer."""
        if not self.enabled:
            return flag
        return bool(self.all_reduce(torch.tensor([float(flag)], device=self.device)).item() > 0)

    def share(self, value: Any) -> Any:
        """Rank 0's value (any picklable object) on every rank."""
        if not self.enabled:
            return value
        box = [value]
        try:
            dist.broadcast_object_list(box, src=0, device=self.device if self.device.type == "cuda" else None)
        except RuntimeError as e:
            raise _lost(e) from None
        return box[0]

    def on_main(self, work: Callable[[], Any]) -> Any:
        """work() run on rank 0 only; its result, or its failure as the same one-sentence error, on every rank."""
        result, failure = None, None
        if self.is_main:
            try:
                result = work()
            except Exception as e:
                failure = e
        if not self.enabled:
            if failure is not None:
                raise failure
            return result
        shared = self.share((result, None if failure is None else user_message(failure)))
        if failure is not None:
            raise failure
        if shared[1] is not None:
            raise StageError(shared[1])
        return shared[0]

    def broadcast_(self, tensors) -> None:
        """Overwrite tensors with rank 0's values."""
        if self.enabled:
            for tensor in tensors:
                dist.broadcast(tensor.data, src=0)


def _lost(error: BaseException) -> RankLost:
    return RankLost(f"another process of this torchrun job stopped ({_first_line(error)})")


def _first_line(error: BaseException) -> str:
    """The backend's reason without its source location ("[/path/pair.cc:561] Connection closed by peer")."""
    text = re.sub(r"^\[[^\]]*\]\s*", "", str(error).strip())
    return text.splitlines()[0][:160] if text else type(error).__name__


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def env_rank() -> int:
    """This process's rank as torchrun set it (0 for a single process), known before the process group exists."""
    return int(os.environ.get("RANK", "0"))


def setup(device_name: str) -> Ranks:
    """The process group torchrun describes in the environment (or a single process), and this rank's device."""
    if not launched_by_torchrun():
        return Ranks(0, 1, pick_device(device_name))
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_name)
    if device.type == "cuda":
        if device.index is None and local_rank >= torch.cuda.device_count():
            raise StageError(
                f"local rank {local_rank} has no GPU of its own ({torch.cuda.device_count()} visible); "
                f"start at most {torch.cuda.device_count()} processes per node"
            )
        device = torch.device("cuda", local_rank) if device.index is None else device
        torch.cuda.set_device(device)
    elif device.type == "mps":
        raise StageError(
            "torchrun needs CUDA (NCCL) or the CPU (gloo); pass --device cpu or run a single process on mps"
        )
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=COLLECTIVE_TIMEOUT)
    return Ranks(rank, world_size, device)


def teardown(ranks: Ranks) -> None:
    """Leave together: a rank that tears its group down while another still writes can abort the process."""
    if ranks.enabled and dist.is_initialized():
        try:
            dist.barrier()
        except RuntimeError as e:
            raise _lost(e) from None
        dist.destroy_process_group()


class _SumOverRanks(torch.autograd.Function):
    """y = sum over ranks of x; every rank's y depends on every x, so the gradient is the sum of the ranks' grads."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        y = x.clone()
        dist.all_reduce(y)
        return y

    @staticmethod
    def backward(ctx, grad_y: torch.Tensor) -> torch.Tensor:
        grad_x = grad_y.clone()
        dist.all_reduce(grad_x)
        return grad_x


class DistributedBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm whose training statistics cover the global batch across ranks (gloo has no SyncBatchNorm)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        count = torch.tensor([x.shape[0] * x.shape[2] * x.shape[3]], dtype=x.dtype, device=x.device)
        stats = _SumOverRanks.apply(torch.cat([x.sum((0, 2, 3)), x.pow(2).sum((0, 2, 3)), count]))
        c = x.shape[1]
        n = stats[-1]
        mean = stats[:c] / n
        var = (stats[c : 2 * c] / n - mean.pow(2)).clamp_min(0)
        with torch.no_grad():
            self.num_batches_tracked.add_(1)
            momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
            self.running_mean.lerp_(mean, momentum)
            self.running_var.lerp_(var * n / (n - 1).clamp_min(1), momentum)
        shape = (1, c, 1, 1)
        y = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        return y * self.weight.view(shape) + self.bias.view(shape) if self.affine else y


def sync_batchnorm(model: nn.Module, ranks: Ranks) -> nn.Module:
    """BatchNorm layers that normalise over the global batch: torch's SyncBatchNorm on CUDA, ours on gloo."""
    if not ranks.enabled:
        return model
    if ranks.device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for name, module in list(model.named_children()):
        if type(module) is nn.BatchNorm2d:
            replacement = DistributedBatchNorm2d(
                module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats
            ).to(ranks.device)
            replacement.load_state_dict(module.state_dict())
            setattr(model, name, replacement)
        else:
            sync_batchnorm(module, ranks)
    return model
