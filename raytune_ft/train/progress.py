"""Turn step statistics into the metrics a person and a monitor read: loss, lr, tokens/s, ETA.

Counters are summed across workers once per logging window (one small all-reduce), so the loss
is the exact token-weighted mean over the whole cluster and throughput is cluster-wide.
"""

from __future__ import annotations

import time
from typing import Any

from .objectives import MetricSums, add_metric_sums
from .step import StepStats
from .strategies import Strategy

__all__ = ["Meter", "reduce_metrics"]


def reduce_metrics(strategy: Strategy, sums: MetricSums, prefix: str = "") -> dict[str, float]:
    """Cluster-wide means of an objective's (sum, count) metrics (all workers must call it, with
    the same names)."""
    if not sums:
        return {}
    flat = strategy.all_reduce_sum([value for pair in sums.values() for value in pair])
    return {f"{prefix}{name}": flat[2 * i] / max(flat[2 * i + 1], 1.0) for i, name in enumerate(sums)}


class Meter:
    def __init__(self, total_steps: int) -> None:
        self.total_steps = total_steps
        self._reset()

    def _reset(self) -> None:
        self._window_start = time.perf_counter()
        self._steps = 0
        self._skipped = 0
        self._sums = [0.0, 0.0, 0.0, 0.0]  # loss_sum, terms, tokens, padded tokens
        self._metrics: MetricSums = {}
        self._last: StepStats | None = None

    def add(self, stats: StepStats) -> None:
        self._steps += 1
        self._skipped += stats.skipped
        for i, value in enumerate((stats.loss_sum, stats.terms, stats.tokens, stats.padded_tokens)):
            self._sums[i] += value
        add_metric_sums(self._metrics, stats.metrics)
        self._last = stats

    def flush(self, strategy: Strategy, step: int) -> dict[str, Any]:
        """Cluster-wide metrics for the window since the last flush (all workers must call it)."""
        elapsed = max(time.perf_counter() - self._window_start, 1e-9)
        loss_sum, terms, tokens, padded = strategy.all_reduce_sum(self._sums)
        last = self._last
        seconds_per_step = elapsed / max(self._steps, 1)
        metrics = {
            "step": step,
            "loss": loss_sum / max(terms, 1.0),
            "lr": last.lr if last else 0.0,
            "grad_norm": last.grad_norm if last else 0.0,
            "tokens_per_s": tokens / elapsed,
            "padded_tokens_per_s": padded / elapsed,
            "s_per_step": seconds_per_step,
            "eta_s": seconds_per_step * (self.total_steps - step),
            **reduce_metrics(strategy, self._metrics),
        }
        if last is not None and last.loss_scale is not None:  # fp16: every worker holds the same scale
            metrics.update(loss_scale=last.loss_scale, skipped_steps=self._skipped)
        self._reset()
        return metrics

    def format(self, m: dict[str, Any]) -> str:
        pct = 100 * m["step"] / self.total_steps
        return (
            f"step {m['step']}/{self.total_steps} ({pct:3.0f}%) | loss {m['loss']:.4f} | lr {m['lr']:.2e} | "
            f"{m['tokens_per_s']:,.0f} tok/s | {m['s_per_step']:.2f} s/step | ETA {_format_duration(m['eta_s'])}"
            + "".join(f" | {label} {m[key]:.3f}" for key, label in _SHOWN.items() if key in m)
            + (f" | {m['skipped_steps']} step(s) skipped (fp16 overflow)" if m.get("skipped_steps") else "")
        )


_SHOWN = {"rewards/accuracies": "acc", "rewards/margins": "margin", "reward": "reward", "kl": "kl"}
"""Objective metrics worth a glance in the progress line (all are in metrics.jsonl)."""


def _format_duration(seconds: float) -> str:
    seconds = round(seconds)
    minutes, sec = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{sec:02d}s"
