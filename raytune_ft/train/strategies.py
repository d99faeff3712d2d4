"""Distributed strategies behind one small protocol, chosen by ``scaling.strategy``.

The loop never asks which strategy it runs under: it wraps the model, asks for a no-sync
context on non-final micro-batches, and sums counters across workers. Without an initialised
process group every strategy degrades to plain single-process training (unit tests, profiling).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Protocol

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

__all__ = ["STRATEGIES", "DDPStrategy", "Strategy", "is_distributed"]


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class Strategy(Protocol):
    def wrap(self, model: torch.nn.Module) -> torch.nn.Module: ...

    def unwrap(self, model: torch.nn.Module) -> torch.nn.Module: ...

    def no_sync(self, model: torch.nn.Module) -> contextlib.AbstractContextManager[None]: ...

    def all_reduce_sum(self, values: Sequence[float]) -> list[float]: ...

    def world_size(self) -> int: ...


class DDPStrategy:
    """Replicate the model on every worker and all-reduce gradients (gloo on CPU, NCCL on GPU)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        model.to(self.device)
        if not is_distributed():
            return model
        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)

    def unwrap(self, model: torch.nn.Module) -> torch.nn.Module:
        return model.module if isinstance(model, DistributedDataParallel) else model

    def no_sync(self, model: torch.nn.Module) -> contextlib.AbstractContextManager[None]:
        if isinstance(model, DistributedDataParallel):
            return model.no_sync()
        return contextlib.nullcontext()

    def all_reduce_sum(self, values: Sequence[float]) -> list[float]:
        if not is_distributed():
            return list(values)
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor)
        return [float(v) for v in tensor.tolist()]

    def world_size(self) -> int:
        return dist.get_world_size() if is_distributed() else 1


STRATEGIES: dict[str, Callable[[torch.device], Strategy]] = {"ddp": DDPStrategy}
