"""The step core: model + objective + strategy + optimizer, one optimizer step at a time.

It knows nothing of Ray, so the same code runs inside Ray Train workers, in unit tests and in
single-GPU profiling scripts. The loss is normalised by the number of loss terms in the whole
window on all workers, so accumulating 4 x 2 samples gives the same update as one batch of 8, and
a worker whose batch holds fewer answer tokens does not weigh more.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from raytune_ft.config import TrainConfig

from .objectives import MetricSums, Objective
from .optimizers import build_optimizer
from .precision import Precision
from .reference import Reference
from .strategies import Strategy

__all__ = ["StepCore", "StepStats", "build_optimizer", "build_scheduler", "move_batch"]


@dataclass
class StepStats:
    loss_sum: float
    """Summed loss over the window (divide by ``terms`` for the mean)."""
    terms: int
    """Loss terms in the window (answer tokens for SFT)."""
    tokens: int
    """Non-pad tokens processed."""
    padded_tokens: int
    """Tokens processed including padding."""
    grad_norm: float
    lr: float
    metrics: MetricSums = field(default_factory=dict)
    """The objective's own metrics over the window, as (sum, count)."""
    skipped: bool = False
    """The window's update was not applied: its fp16 gradients overflowed."""
    loss_scale: float | None = None
    """fp16's dynamic loss scale after the window; None without loss scaling."""


@dataclass
class StepCore:
    model: torch.nn.Module
    objective: Objective
    strategy: Strategy
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    max_grad_norm: float | None
    precision: Precision = field(default_factory=lambda: Precision("fp32"))
    reference: Reference | None = None
    """The objective's reference model (None without one): PPO's feed scores the KL of its rewards with it."""

    def step(self, micro_batches: Sequence[dict[str, torch.Tensor]]) -> StepStats:
        """Forward/backward every micro-batch, then clip, step and advance the schedule."""
        self.model.train()
        terms = sum(self.objective.terms(batch) for batch in micro_batches)
        # Gradients are averaged over workers, so scale by world / global terms to get the global token mean.
        world = self.strategy.world_size()
        scale = world / max(self.strategy.all_reduce_sum([terms])[0], 1.0)
        loss_total = 0.0
        for i, batch in enumerate(micro_batches):
            last = i == len(micro_batches) - 1
            with contextlib.nullcontext() if last else self.strategy.no_sync(self.model):
                with self.precision.autocast():
                    loss = self.objective.loss_sum(self.model, batch)
                self.strategy.backward(self.model, self.precision.scale(loss * scale))
            loss_total += float(loss.detach())
        lr = float(self.scheduler.get_last_lr()[0])
        self.precision.unscale(self.optimizer)
        overflow_check = self.precision.scaler is not None
        grad_norm = self.strategy.optimizer_step(self.model, self.optimizer, self.max_grad_norm, overflow_check)
        applied = self.precision.update(grad_norm)
        if applied:  # as transformers' Trainer: a skipped fp16 step does not advance the schedule
            self.scheduler.step()
        return StepStats(
            loss_sum=loss_total,
            terms=terms,
            tokens=sum(int(b["attention_mask"].sum()) for b in micro_batches),
            padded_tokens=sum(b["input_ids"].numel() for b in micro_batches),
            grad_norm=grad_norm,
            lr=lr,
            metrics=self.objective.metrics(),
            skipped=not applied,
            loss_scale=self.precision.loss_scale,
        )

    @torch.no_grad()
    def evaluate(
        self, batches: Iterable[dict[str, torch.Tensor]], idle: Iterable[dict[str, torch.Tensor]] = ()
    ) -> tuple[float, int, MetricSums]:
        """Summed loss, loss terms and the objective's metrics over ``batches`` on this worker (no
        gradients, eval mode).

        Runs the unwrapped model: a DDP forward may sync buffers with the other workers, which
        would hang when workers hold different numbers of validation batches. ``idle`` batches run
        forward uncounted (a sharded model needs every worker in every forward).
        """
        model = self.strategy.unwrap(self.model)
        model.eval()
        loss_sum, terms = 0.0, 0
        with self.precision.autocast():
            for batch in batches:
                loss_sum += float(self.objective.loss_sum(model, batch))
                terms += self.objective.terms(batch)
            metrics = self.objective.metrics()
            for batch in idle:
                self.objective.loss_sum(model, batch)
        self.objective.metrics()  # the idle batches' metrics are not counted
        model.train()
        return loss_sum, terms, metrics


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """Linear warmup over ``warmup_steps`` (else ``warmup_ratio`` of the steps), then ``lr_scheduler`` decay."""
    from transformers import get_scheduler

    name = "constant_with_warmup" if cfg.lr_scheduler == "constant" else cfg.lr_scheduler
    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else math.ceil(total_steps * cfg.warmup_ratio)
    scheduler: Any = get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=total_steps)
    return scheduler  # type: ignore[no-any-return]


def move_batch(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {key: value.to(device, non_blocking=True) for key, value in batch.items()}
