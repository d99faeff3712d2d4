"""What the panel reads off disk: run folders with their ``metrics.jsonl`` and checkpoints, and
sweep folders with their ``results.json``. Files are re-read on every refresh, so a running job's
curves grow as its rank-0 worker appends lines."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from raytune_ft.models import CONFIG_FILE, STATE_FILE, checkpoint_step, is_adapter_checkpoint

__all__ = ["CURVES", "CheckpointInfo", "Sweep", "find_runs", "find_sweeps", "list_checkpoints", "read_metrics",
           "read_sweep", "run_config"]  # fmt: skip

CURVES = (
    "loss", "eval_loss", "lr", "tokens_per_s", "reward", "kl", "response_length", "rollout/tokens_per_s", "value_loss",
)  # fmt: skip
"""The ``metrics.jsonl`` series the Monitor page plots against step (those a run logs; from ``reward`` on, the
online stages', and ``value_loss`` PPO's)."""


@dataclass(frozen=True)
class CheckpointInfo:
    path: Path
    step: int
    adapter: bool
    """A LoRA adapter (served as BASE:RUN) rather than full weights."""


@dataclass(frozen=True)
class Sweep:
    metric: str
    best_trial: str | None
    trials: list[dict[str, Any]]
    """``TrialRow`` fields per trial, the draw flattened in as its dotted keys."""
    keys: list[str]
    """The swept keys."""


def find_runs(root: str | Path) -> list[Path]:
    """Run folders under ``root`` (those with ``metrics.jsonl`` or a checkpoint), newest first."""
    base = Path(root).expanduser()
    if not base.is_dir():
        return []
    found = {p.parent for p in base.rglob("metrics.jsonl")}
    found |= {p.parent.parent for p in base.rglob(STATE_FILE)}
    return sorted(found, key=_mtime, reverse=True)


def find_sweeps(root: str | Path) -> list[Path]:
    """Sweep folders under ``root`` (those with ``results.json``), newest first."""
    base = Path(root).expanduser()
    return sorted((p.parent for p in base.rglob("results.json")), key=_mtime, reverse=True) if base.is_dir() else []


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """Every record of ``run_dir/metrics.jsonl``; a line being written (no newline yet) is left for later."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    text = path.read_text(encoding="utf-8")
    complete = text[: text.rfind("\n") + 1]
    return [json.loads(line) for line in complete.splitlines() if line.strip()]


def list_checkpoints(run_dir: str | Path) -> list[CheckpointInfo]:
    """The run's checkpoints, newest step first."""
    folder = Path(run_dir)
    found = [child for child in folder.glob("*/") if (child / STATE_FILE).is_file()] if folder.is_dir() else []
    infos = [CheckpointInfo(p, checkpoint_step(p), is_adapter_checkpoint(p)) for p in found]
    return sorted(infos, key=lambda info: info.step, reverse=True)


def run_config(run_dir: str | Path) -> Path | None:
    """The config a run's newest checkpoint saved (None before the first checkpoint)."""
    checkpoints = list_checkpoints(run_dir)
    return checkpoints[0].path / CONFIG_FILE if checkpoints else None


def read_sweep(folder: str | Path) -> Sweep:
    """``folder/results.json`` as the Sweeps page shows it."""
    data = json.loads((Path(folder) / "results.json").read_text(encoding="utf-8"))
    keys = sorted({key for trial in data["trials"] for key in trial["values"]})
    trials = [{**{k: v for k, v in trial.items() if k != "values"}, **trial["values"]} for trial in data["trials"]]
    return Sweep(metric=data["metric"], best_trial=data.get("best_trial"), trials=trials, keys=keys)


def _mtime(path: Path) -> float:
    return path.stat().st_mtime
