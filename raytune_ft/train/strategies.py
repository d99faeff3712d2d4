"""Distributed strategies behind one small protocol, chosen by ``scaling.strategy``.

The loop never asks which strategy it runs under: it wraps the model, asks for a no-sync
context on non-final micro-batches, sums counters across workers, and hands checkpointing to the
strategy (a replicated model is saved by rank 0 alone; a sharded one is gathered for export and
saved shard by shard for resume). Without an initialised process group every strategy degrades
to plain single-process training (unit tests, profiling).
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from raytune_ft.config import JobConfig
from raytune_ft.models import CheckpointError

from .precision import AUTOCAST_DTYPES, compute_precision

__all__ = [
    "SHARDED_DIR",
    "STRATEGIES",
    "DDPStrategy",
    "DeepSpeedStrategy",
    "FSDP2Strategy",
    "Strategy",
    "decoder_layers",
    "deepspeed_config",
    "is_distributed",
]
OptimizerFactory = Callable[[torch.nn.Module], torch.optim.Optimizer]

SHARDED_DIR = "sharded"
"""Checkpoint subfolder of a sharded strategy's torch.distributed.checkpoint files (model + optimizer)."""


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _rank() -> int:
    return dist.get_rank() if is_distributed() else 0


class Strategy(Protocol):
    collective_forward: bool
    """Whether every worker must run each forward pass together (sharded parameters are gathered)."""
    even_passes: bool
    """Whether every worker must run the same number of forward/backward passes in a step: its forward is
    collective, or each backward reduces gradients (ZeRO-2), not only the step's last."""

    def prepare(
        self, model: torch.nn.Module, make_optimizer: OptimizerFactory
    ) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
        """The wrapped model and the (torch) optimizer over its trainable parameters."""
        ...

    def unwrap(self, model: torch.nn.Module) -> torch.nn.Module: ...

    def no_sync(self, model: torch.nn.Module) -> contextlib.AbstractContextManager[None]: ...

    def backward(self, model: torch.nn.Module, loss: torch.Tensor) -> None: ...

    def optimizer_step(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        max_grad_norm: float | None,
        skip_nonfinite: bool = False,
    ) -> float:
        """Clip the window's gradients, update the weights and clear the gradients; returns the norm.
        ``skip_nonfinite``: leave the weights as they are when the norm is inf or nan (fp16 overflow)."""
        ...

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
    """Counters summed across workers and the plain torch step; shared by the strategies."""

    def __init__(self, device: torch.device, cfg: JobConfig) -> None:
        self.device = device
        self.cfg = cfg

    def prepare(
        self, model: torch.nn.Module, make_optimizer: OptimizerFactory
    ) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
        wrapped = self.wrap(model)
        return wrapped, make_optimizer(wrapped)

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        raise NotImplementedError

    def backward(self, model: torch.nn.Module, loss: torch.Tensor) -> None:
        loss.backward()  # type: ignore[no-untyped-call]

    def optimizer_step(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        max_grad_norm: float | None,
        skip_nonfinite: bool = False,
    ) -> float:
        params = [p for p in model.parameters() if p.grad is not None]
        norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm if max_grad_norm is not None else math.inf)
        value = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)  # a DTensor when sharded
        if not (skip_nonfinite and not math.isfinite(value)):
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return value

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
    even_passes = False  # gradients are all-reduced once, in the window's last backward (no_sync before it)

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        if getattr(model, "hf_quantizer", None) is None:  # a quantized (QLoRA) model is already on its GPU
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
        if _rank() != 0:
            return {}
        return {"optimizer": optimizer.state_dict(), "masters": self._masters(model)}

    def load_state(
        self, folder: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, saved: dict[str, Any]
    ) -> None:
        optimizer.load_state_dict(saved["optimizer"])
        masters = saved.get("masters") or {}
        with torch.no_grad():
            for name, parameter in self.unwrap(model).named_parameters():
                if name in masters:
                    parameter.copy_(masters[name])

    def _masters(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        """Trainable float32 weights of a whole model exported in a half-precision ``model.dtype``: the
        checkpoint's weights are rounded, so resuming exactly needs these."""
        unwrapped = self.unwrap(model)
        if hasattr(unwrapped, "peft_config") or self.cfg.model.dtype == "float32":
            return {}
        return {
            name: p.detach().to("cpu", copy=True)
            for name, p in unwrapped.named_parameters()
            if p.requires_grad and p.dtype == torch.float32
        }


class FSDP2Strategy(_Collectives):
    """Shard parameters, gradients and optimizer state across workers (torch FSDP2 ``fully_shard``).

    Each decoder layer is one FSDP unit (gathered for its forward and backward, then freed), and the
    root holds the rest (embeddings, norm, head). Mixed precision (``MixedPrecisionPolicy``): the
    sharded parameters keep their dtype (float32 masters for the trainable ones), are gathered in the
    compute dtype of ``train.precision``, and gradients are reduced in float32. Checkpoints gather
    the full weights on rank 0 for export and write model + optimizer shards with
    torch.distributed.checkpoint (``SHARDED_DIR``), each worker its own, for resume.
    """

    collective_forward = True
    even_passes = True

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        model.to(self.device)
        if not is_distributed():
            return model
        mesh = init_device_mesh(self.device.type, (dist.get_world_size(),))
        policy = MixedPrecisionPolicy(
            param_dtype=AUTOCAST_DTYPES.get(compute_precision(self.cfg)), reduce_dtype=torch.float32
        )
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

        _require_written_by(folder, SHARDED_DIR, "fsdp2")
        model_state, optimizer_state = get_state_dict(model, optimizer)
        load({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=folder / SHARDED_DIR)  # in place
        set_state_dict(model, optimizer, model_state_dict=model_state, optim_state_dict=optimizer_state)


class DeepSpeedStrategy(_Collectives):
    """DeepSpeed ZeRO stage 0-3 (optionally offloading optimizer state or parameters to CPU memory).

    The engine gets our torch optimizer (a DeepSpeed-config optimizer would JIT-build fused kernels)
    and runs in unmanaged gradient accumulation: each micro-batch's ``backward`` accumulates, and the
    window's one ``step`` reduces, clips (``gradient_clipping``) and updates, as in the other
    strategies. Checkpoints: the full weights (gathered across ranks under ZeRO-3) exported on rank 0,
    and the engine's own checkpoint (``deepspeed/``, each rank its partition; frozen weights left out)
    for resume.
    """

    def __init__(self, device: torch.device, cfg: JobConfig) -> None:
        self.device = device
        self.cfg = cfg
        self.stage = 0
        self.collective_forward = False
        self.even_passes = False

    def prepare(
        self, model: torch.nn.Module, make_optimizer: OptimizerFactory
    ) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
        import deepspeed

        model.to(self.device)
        optimizer = make_optimizer(model)
        config = deepspeed_config(self.cfg, self.world_size(), _hidden_size(model))
        self.stage = int(config["zero_optimization"].get("stage", 0))
        self.collective_forward = self.stage == 3  # ZeRO-3 gathers each layer's parameters in forward
        # ZeRO-2 and -3 reduce and partition gradients in every backward, accumulation boundary or not
        self.even_passes = self.stage >= 2
        engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
        return engine, optimizer  # the scheduler drives the torch optimizer's param groups, shared with ZeRO's

    def unwrap(self, model: torch.nn.Module) -> torch.nn.Module:
        module: torch.nn.Module = getattr(model, "module", model)
        return module

    def no_sync(self, model: torch.nn.Module) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()  # unmanaged accumulation: gradients wait for step()

    def backward(self, model: torch.nn.Module, loss: torch.Tensor) -> None:
        model.backward(loss, scale_wrt_gas=False)  # type: ignore[operator]  # the loss is already scaled

    def optimizer_step(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        max_grad_norm: float | None,
        skip_nonfinite: bool = False,
    ) -> float:
        model.step()  # type: ignore[operator]  # DeepSpeed's fp16 loss scaler skips an overflowing step itself
        norm = model.get_global_grad_norm()  # type: ignore[operator]
        return float(norm) if norm is not None else math.nan

    def full_state_dict(self, model: torch.nn.Module) -> dict[str, torch.Tensor] | None:
        if self.stage == 3:
            state: dict[str, torch.Tensor] | None = model._zero3_consolidated_16bit_state_dict()  # type: ignore[operator]
            return state
        return self.unwrap(model).state_dict() if _rank() == 0 else None

    def save_state(self, folder: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        engine: Any = model
        engine.save_checkpoint(str(folder / _DEEPSPEED_DIR), tag=_DEEPSPEED_TAG, exclude_frozen_parameters=True)
        return {}

    def load_state(
        self, folder: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, saved: dict[str, Any]
    ) -> None:
        _require_written_by(folder, _DEEPSPEED_DIR, "deepspeed")
        engine: Any = model
        engine.load_checkpoint(
            str(folder / _DEEPSPEED_DIR), tag=_DEEPSPEED_TAG, load_module_strict=False, load_lr_scheduler_states=False
        )


_DEEPSPEED_DIR, _DEEPSPEED_TAG = "deepspeed", "state"


def _require_written_by(folder: Path, subfolder: str, strategy: str) -> None:
    """A checkpoint resumes under the strategy that wrote it: only that one leaves ``subfolder``."""
    if not (folder / subfolder).is_dir():
        raise CheckpointError(
            f"{folder}: no {subfolder}/ folder, so this checkpoint was not written by scaling.strategy {strategy}; "
            "resume it with the strategy that wrote it, or start a new train.run_name"
        )


def deepspeed_config(cfg: JobConfig, world_size: int, hidden_size: int | None = None) -> dict[str, Any]:
    """The DeepSpeed config for this run: from ``scaling.deepspeed`` (a ZeRO stage, or a config mapping whose
    ``"auto"`` values are filled in, as with LLaMA-Factory's files), plus what our loop needs."""
    setting = cfg.scaling.deepspeed if cfg.scaling.deepspeed is not None else 2
    if isinstance(setting, int):
        config: dict[str, Any] = {"zero_optimization": _zero_section(setting, cfg.scaling.deepspeed_offload)}
    else:
        config = copy.deepcopy(setting)
    micro, accumulation = cfg.train.per_device_batch_size, cfg.train.gradient_accumulation_steps
    ours = {
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": accumulation,
        "train_batch_size": micro * accumulation * world_size,
        "gradient_clipping": cfg.train.max_grad_norm or 0.0,
    }
    config.update(ours)
    precision = compute_precision(cfg)  # DeepSpeed's sections: cast, fp32 masters, and fp16 loss scaling
    config["bf16"] = {**config.get("bf16", {}), "enabled": precision == "bf16"}
    config["fp16"] = {**config.get("fp16", {}), "enabled": precision == "fp16"}
    config["managed_gradient_accumulation"] = False
    config["zero_force_ds_cpu_optimizer"] = False  # our torch AdamW, also with optimizer offload
    config.setdefault("steps_per_print", 2**31 - 1)
    zero = config.setdefault("zero_optimization", {})
    sizes = {
        "reduce_bucket_size": hidden_size**2 if hidden_size else 5 * 10**8,
        "stage3_prefetch_bucket_size": int(0.9 * hidden_size**2) if hidden_size else 5 * 10**7,
        "stage3_param_persistence_threshold": 10 * hidden_size if hidden_size else 10**5,
    }
    for key, value in sizes.items():  # transformers' fill-ins for LLaMA-Factory's "auto"
        if zero.get(key) == "auto":
            zero[key] = value
    return config


def _zero_section(stage: int, offload: str) -> dict[str, Any]:
    section: dict[str, Any] = {"stage": stage}
    if offload in ("optimizer", "all"):
        section["offload_optimizer"] = {"device": "cpu"}
    if offload == "all":
        section["offload_param"] = {"device": "cpu"}
    return section


def _hidden_size(model: torch.nn.Module) -> int | None:
    config = getattr(model, "config", None)
    size = getattr(config, "hidden_size", None)
    return size if isinstance(size, int) else None


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The repeated blocks of a transformers model (its ``_no_split_modules`` classes), in order."""
    names: set[str] = set()
    for module in model.modules():
        names.update(getattr(module, "_no_split_modules", None) or ())
    layers = [module for module in model.modules() if type(module).__name__ in names]
    if not layers:
        raise ValueError(f"{type(model).__name__}: no decoder layers found to shard (no _no_split_modules)")
    return layers


STRATEGIES: dict[str, Callable[[torch.device, JobConfig], Strategy]] = {
    "ddp": DDPStrategy,
    "fsdp2": FSDP2Strategy,
    "deepspeed": DeepSpeedStrategy,
}
