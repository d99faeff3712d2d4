"""Compute precision, kept apart from the storage dtype (``model.dtype``).

``bf16`` and ``fp16`` run the forward pass under ``torch.autocast`` while the trainable weights stay
float32: the optimizer's moments then are float32 too, and small updates are not rounded away. The
frozen base keeps its storage dtype, so a bf16 base costs two bytes a parameter. ``fp16`` adds dynamic
loss scaling (``GradScaler``, the sharded one under FSDP2): a window whose gradients overflow is not
applied, the scale halves, and the learning-rate schedule does not advance. DeepSpeed does all of this
itself from its ``bf16``/``fp16`` config sections (:func:`raytune_ft.train.strategies.deepspeed_config`),
so under DeepSpeed this object only names the precision.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any

import torch

from raytune_ft.config import JobConfig

__all__ = ["AUTOCAST_DTYPES", "Precision", "build_precision", "cast_trainable", "compute_precision"]

AUTOCAST_DTYPES: dict[str, torch.dtype] = {"bf16": torch.bfloat16, "fp16": torch.float16}
"""Precisions that compute under autocast, and in which dtype."""

_FROM_STORAGE = {"bfloat16": "bf16", "float16": "fp16"}


def compute_precision(cfg: JobConfig) -> str:
    """``train.precision`` with ``auto`` resolved: a half-precision ``model.dtype`` computes in it; a float32
    one in bf16 on GPUs (every current training GPU has bf16 units) and in fp32 on CPUs, where bf16 matmuls
    are slower than fp32 ones without AMX units."""
    if cfg.train.precision != "auto":
        return cfg.train.precision
    if cfg.model.dtype in _FROM_STORAGE:
        return _FROM_STORAGE[cfg.model.dtype]
    return "bf16" if cfg.scaling.use_gpu else "fp32"


@dataclass
class Precision:
    """How one worker's step computes: autocast around the forward pass, and loss scaling for fp16."""

    name: str
    """fp32, bf16, fp16 or pure_bf16 (resolved, never auto)."""
    device_type: str = "cpu"
    autocast_dtype: torch.dtype | None = None
    """The dtype the forward pass computes in under autocast; None: no autocast."""
    scaler: Any = None
    """``torch.amp.GradScaler`` (or FSDP2's sharded one) for fp16; None otherwise."""

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.autocast_dtype)

    def scale(self, loss: torch.Tensor) -> torch.Tensor:
        return self.scaler.scale(loss) if self.scaler is not None else loss  # type: ignore[no-any-return]

    def unscale(self, optimizer: torch.optim.Optimizer) -> None:
        """Divide the window's gradients by the loss scale (before clipping) and note any inf/nan."""
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)

    def update(self, grad_norm: float) -> bool:
        """Adjust the loss scale after the window; returns whether its update was applied. Gradients with an
        inf or nan (GradScaler's test) make the total norm non-finite, so the strategy skipped that step."""
        if self.scaler is None:
            return True
        self.scaler.update()
        return math.isfinite(grad_norm)

    @property
    def loss_scale(self) -> float | None:
        return float(self.scaler.get_scale()) if self.scaler is not None else None

    def state_dict(self) -> dict[str, Any]:
        return {"scaler": self.scaler.state_dict()} if self.scaler is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])


def build_precision(cfg: JobConfig, device: torch.device, sharded: bool = False) -> Precision:
    """This run's :class:`Precision` on ``device``; ``sharded``: the gradients are FSDP2 DTensors."""
    name = compute_precision(cfg)
    if cfg.scaling.strategy == "deepspeed":  # DeepSpeed casts, keeps fp32 masters and scales the loss itself
        return Precision(name, device.type)
    scaler: Any = None
    if name == "fp16":
        if sharded:
            from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

            scaler = ShardedGradScaler(device.type)
        else:
            scaler = torch.amp.GradScaler(device.type)
    return Precision(name, device.type, AUTOCAST_DTYPES.get(name), scaler)


def cast_trainable(model: torch.nn.Module, precision: str) -> None:
    """Trainable weights in float32 (LoRA matrices, heads, or the whole model in full tuning), so that the
    optimizer updates fp32 masters; in bfloat16 for ``pure_bf16``."""
    dtype = torch.bfloat16 if precision == "pure_bf16" else torch.float32
    for parameter in model.parameters():
        if parameter.requires_grad and parameter.is_floating_point() and parameter.dtype != dtype:
            parameter.data = parameter.data.to(dtype)
