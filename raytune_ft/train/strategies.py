"""Distributed strategies behind one small protocol, chosen by ``scaling.strategy``.

The loop never asks which strategy it runs under: it wraps the model, asks for a no-sync
context on non-final micro-batches, sums counters across workers, and hands checkpointing to the
strategy (a replicated model is saved by rank 0 alone; a sharded one is gathered for export and
saved shard by shard for resume). Without an initialised process group every strategy degrades
to plain single-process training (unit tests, profiling).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

__all__ = ["SHARDED_DIR", "STRATEGIES", "DDPStrategy", "FSDP2Strategy", "Strategy", "decoder_layers", "is_distributed"]

SHARDED_DIR = "sharded"
"""Checkpoint subfolder of a sharded strategy's torch.distributed.checkpoint files (model + optimizer)."""


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _rank() -> int:
    return dist.get_rank() if is_distributed() else 0


class Strategy(Protocol):
    collective_forward: bool
    """Whether every worker must run each forward pass together (sharded parameters are gathered)."""

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module: ...

    def unwrap(self, model: torch.nn.Module) -> torch.nn.Module: ...

    def no_sync(self, model: torch.nn.Module) -> contextlib.AbstractContextManager[None]: ...

    def all_reduce_sum(self, values: Sequence[float]) -> list[float]: ...

    def world_size(self) -> int: ...

    def full_state_dict(self, model: torch.nn.Module) -> dict[str, torch.Tensor] | None:
        """The whole model's weights (CPU) on rank 0, None elsewhere; every worker calls it."""
        ...

    def save_state(self, folder: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """Write what resuming needs beyond the exported weights; every worker calls it. Returns what
        rank 0 stores in the checkpoint's single optimizer file."""
        ...

    def load_state(
        self, folder: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, saved: dict[str, Any]
    ) -> None:
        """Restore what ``save_state`` wrote (``saved``: the optimizer file's contents)."""
        ...


class _Collectives:
    """Counters summed across workers; the same for every strategy."""

    device: torch.device

    def all_reduce_sum(self, values: Sequence[float]) -> list[float]:
        if not is_distributed():
            return list(values)
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor)
        return [float(v) for v in tensor.tolist()]

    def world_size(self) -> int:
        return dist.get_world_size() if is_distributed() else 1


class DDPStrategy(_Collectives):
    """Replicate the model on every worker and all-reduce gradients (gloo on CPU, NCCL on GPU)."""

    collective_forward = False

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

    def full_state_dict(self, model: torch.nn.Module) -> dict[str, torch.Tensor] | None:
        return self.unwrap(model).state_dict() if _rank() == 0 else None

    def save_state(self, folder: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        return {"optimizer": optimizer.state_dict()} if _rank() == 0 else {}

    def load_state(
        self, folder: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, saved: dict[str, Any]
    ) -> None:
        optimizer.load_state_dict(saved["optimizer"])


class FSDP2Strategy(_Collectives):
    """Shard parameters, gradients and optimizer state across workers (torch FSDP2 ``fully_shard``).

    Each decoder layer is one FSDP unit (gathered for its forward and backward, then freed), and the
    root holds the rest (embeddings, norm, head). Mixed precision: parameters compute in the dtype
    they were loaded in (``model.dtype``) and gradients are reduced in float32. Checkpoints gather
    the full weights on rank 0 for export and write model + optimizer shards with
    torch.distributed.checkpoint (``SHARDED_DIR``), each worker its own, for resume.
    """

    collective_forward = True

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        model.to(self.device)
        if not is_distributed():
            return model
        mesh = init_device_mesh(self.device.type, (dist.get_world_size(),))
        dtype = next(model.parameters()).dtype
        policy = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)
        for layer in decoder_layers(model):
            fully_shard(layer, mesh=mesh, mp_policy=policy)
        fully_shard(model, mesh=mesh, mp_policy=policy)
        return model

    def unwrap(self, model: torch.nn.Module) -> torch.nn.Module:
        return model  # fully_shard changes the modules in place

    @contextlib.contextmanager
    def no_sync(self, model: torch.nn.Module) -> Iterator[None]:
        """Accumulate unsharded gradients locally; the window's last backward reduce-scatters them."""
        sync = getattr(model, "set_requires_gradient_sync", None)
        if sync is None:
            yield
            return
        sync(False)
        try:
            yield
        finally:
            sync(True)

    def full_state_dict(self, model: torch.nn.Module) -> dict[str, torch.Tensor] | None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        state: dict[str, torch.Tensor] = get_model_state_dict(model, options=options)  # type: ignore[assignment]
        return state if _rank() == 0 else None

    def save_state(self, folder: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        from torch.distributed.checkpoint.state_dict import get_state_dict
        from torch.distributed.checkpoint.state_dict_saver import save

        model_state, optimizer_state = get_state_dict(model, optimizer)
        save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=folder / SHARDED_DIR)
        return {}

    def load_state(
        self, folder: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, saved: dict[str, Any]
    ) -> None:
        from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
        from torch.distributed.checkpoint.state_dict_loader import load

        if not (folder / SHARDED_DIR).is_dir():
            raise FileNotFoundError(
                f"{folder}: no {SHARDED_DIR}/ folder, so this checkpoint was not written by scaling.strategy fsdp2; "
                "resume it with the strategy that wrote it"
            )
        model_state, optimizer_state = get_state_dict(model, optimizer)
        load({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=folder / SHARDED_DIR)  # in place
        set_state_dict(model, optimizer, model_state_dict=model_state, optim_state_dict=optimizer_state)


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The repeated blocks of a transformers model (its ``_no_split_modules`` classes), in order."""
    names: set[str] = set()
    for module in model.modules():
        names.update(getattr(module, "_no_split_modules", None) or ())
    layers = [module for module in model.modules() if type(module).__name__ in names]
    if not layers:
        raise ValueError(f"{type(model).__name__}: no decoder layers found to shard (no _no_split_modules)")
    return layers


STRATEGIES: dict[str, Callable[[torch.device], Strategy]] = {"ddp": DDPStrategy, "fsdp2": FSDP2Strategy}
