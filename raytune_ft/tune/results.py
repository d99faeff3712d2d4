"""What a sweep leaves behind: one row per trial, the table printed at the end, ``results.csv`` and
``results.json``, and the best trial's config as a YAML that ``raytune-ft train`` runs as is."""

from __future__ import annotations

import csv
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from raytune_ft.config import JobConfig, dump_config, with_values

__all__ = ["SweepFiles", "TrialRow", "best_trial", "format_table", "stopped_early", "trial_rows", "write_results"]


@dataclass(frozen=True)
class TrialRow:
    """One trial of a sweep, as it ended (or stands, for an interrupted sweep)."""

    trial_id: str
    status: str
    """``completed``, ``stopped early`` (by ASHA), ``error`` or ``unfinished`` (re-run to continue)."""
    values: dict[str, Any]
    """The trial's draw: swept key -> value."""
    step: int | None
    total_steps: int | None
    metric: float | None
    """The sweep's metric at the trial's last report."""
    loss: float | None
    """The training loss at the trial's last report."""
    checkpoint: str | None
    """The newest checkpoint of the trial's run."""
    run_dir: str | None
    error: str | None = None


@dataclass(frozen=True)
class SweepFiles:
    csv: Path
    json: Path
    best_config: Path | None


def trial_rows(grid: Any, metric: str, saved: dict[str, str]) -> list[TrialRow]:
    """Rows of a Ray Tune ``ResultGrid`` by trial id; ``saved`` is each trial's status in the sweep's
    saved state (an interrupted sweep's running trials are saved as such, though stopped since)."""
    # ResultGrid lists its results in the order of the trials behind it, which carry the ids.
    trials = grid._experiment_analysis.trials
    rows = [
        _row(trial.trial_id, saved.get(trial.trial_id, trial.status), result, metric)
        for trial, result in zip(trials, grid, strict=True)
    ]
    return sorted(rows, key=lambda row: row.trial_id)


def _row(trial_id: str, tune_status: str, result: Any, metric: str) -> TrialRow:
    last = result.metrics or {}
    step, total = last.get("step"), last.get("total_steps")
    if result.error is not None or tune_status == "ERROR":
        status = "error"
    elif tune_status != "TERMINATED" or step is None:
        status = "unfinished"
    else:
        status = "stopped early" if stopped_early(last) else "completed"
    error = str(result.error).strip().splitlines()[-1] if result.error is not None else None
    return TrialRow(
        trial_id=trial_id,
        status=status,
        values=dict(result.config or {}),
        step=step,
        total_steps=total,
        metric=_number(last.get(metric)),
        loss=_number(last.get("loss")),
        checkpoint=last.get("checkpoint_path"),
        run_dir=last.get("run_dir"),
        error=error,
    )


def stopped_early(last: dict[str, Any]) -> bool:
    """Whether a trial whose last result is ``last`` ended before its run's final step (a scheduler stopped it)."""
    step, total = last.get("step"), last.get("total_steps")
    return step is not None and total is not None and step < total


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def best_trial(rows: list[TrialRow], mode: str) -> TrialRow | None:
    """The trial with the best last ``metric`` (``mode`` min or max); None when no trial reported it."""
    scored = [row for row in rows if row.metric is not None and row.status != "error"]
    if not scored:
        return None
    pick = min if mode == "min" else max
    return pick(scored, key=lambda row: float(row.metric or 0.0))


def format_table(rows: list[TrialRow], metric: str, best: TrialRow | None) -> str:
    """The results table the terminal shows, best trial marked with ``*``."""
    keys = sorted({key for row in rows for key in row.values})
    header = ["", "trial", "status", "steps", *keys, metric, "loss"]
    lines = [header]
    for row in rows:
        steps = f"{row.step}/{row.total_steps}" if row.step is not None else "-"
        lines.append([
            "*" if row is best else "", row.trial_id, row.status, steps,
            *(_cell(row.values.get(key)) for key in keys), _cell(row.metric), _cell(row.loss),
        ])  # fmt: skip
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
                     for line in lines)  # fmt: skip


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def write_results(
    folder: Path, rows: list[TrialRow], best: TrialRow | None, base: JobConfig, best_run_name: str, metric: str
) -> SweepFiles:
    """``results.csv``, ``results.json`` and (when a trial reported the metric) ``best_config.yaml``:
    ``base`` with the best trial's values, to train as run ``best_run_name``."""
    keys = sorted({key for row in rows for key in row.values})
    table = folder / "results.csv"
    with table.open("w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        fields = ["trial_id", "status", "step", "total_steps", *keys, "metric", "loss", "checkpoint", "run_dir"]
        fields.append("error")
        writer.writerow([metric if field == "metric" else field for field in fields])
        for row in rows:
            flat = {**asdict(row), **row.values}
            writer.writerow(["" if flat.get(f) is None else flat[f] for f in fields])
    listing = folder / "results.json"
    best_id = best.trial_id if best else None
    summary = {"metric": metric, "best_trial": best_id, "trials": [asdict(row) for row in rows]}
    listing.write_text(json.dumps(summary, indent=2) + "\n")
    if best is None:
        return SweepFiles(csv=table, json=listing, best_config=None)
    config = folder / "best_config.yaml"
    chosen = with_values(base, {**best.values, "train.run_name": best_run_name})
    note = f"# the best trial ({best.trial_id}) of the sweep in {folder}; train it: raytune-ft train {config}\n"
    config.write_text(note + dump_config(chosen), encoding="utf-8")
    return SweepFiles(csv=table, json=listing, best_config=config)
