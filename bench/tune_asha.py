"""What ASHA saves: the same learning-rate sweep under ASHA and under FIFO, in one invocation.

Reference configuration (shared/bench-data/README.md): SmolLM2-135M-Instruct, LoRA r8 on all
linear layers, batch 4, lr cosine, fp32, alpaca_1k (40 rows held out for eval_loss), 30 steps per
trial, eval every 5 steps. cutoff_len is 256 instead of 512 to keep the two sweeps under 20 minutes
on 2 CPUs. The space is a grid of learning rates, so both schedulers run the very same trials
(deterministic, same seed): FIFO trains each to the end and finds the true best by final
eval_loss; ASHA (grace 5 steps, reduction factor 3) stops trials that trail at 5 and 15 steps.

Figures: trial-steps trained (each run's own metrics.jsonl, so steps trained after ASHA's decision
count too), wall time, the best learning rate each found and whether they agree.
Results: bench/results/tune_asha.json.

    .venv/bin/python bench/tune_asha.py [--steps 30] [--lrs 1e-3,3e-5,1e-2,1e-4,3e-3,3e-4] [--out FILE]

The grid's order is the order trials start in, and it matters to ASHA: a trial is only compared
with those that reached the same step before it. The default order is a fixed shuffle; in ascending
order (the worst learning rates first) ASHA has nothing better to compare the early trials with.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from train_throughput import job_overrides  # noqa: E402  (the shared reference configuration)

RESULTS = ROOT / "bench" / "results" / "tune_asha.json"


def sweep_overrides(steps: int, lrs: list[float], scheduler: str, storage: str) -> list[str]:
    reference = job_overrides(steps, 1, storage, f"sweep_{scheduler}")
    base = [o for o in reference if not o.startswith("train.logging_steps")]
    grid = ", ".join(str(lr) for lr in lrs)
    return [
        *base,
        "data.cutoff_len=256",
        "data.val_size=40",
        "train.logging_steps=1",  # every step in metrics.jsonl: the trained steps are counted exactly
        "train.eval_steps=5",
        f"tune.space={{train.learning_rate: {{grid: [{grid}]}}}}",
        f"tune.scheduler={scheduler}",
        "tune.grace_period=5",
        "tune.reduction_factor=3",
    ]


def trained_steps(run_dir: Path) -> int:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines() if (run_dir / "metrics.jsonl").is_file() else []
    return max((json.loads(line)["step"] for line in lines), default=0)


def run(scheduler: str, steps: int, lrs: list[float], storage: str) -> dict[str, object]:
    from raytune_ft.config import load_config
    from raytune_ft.tune import run_sweep

    cfg = load_config(None, sweep_overrides(steps, lrs, scheduler, storage))
    start = time.perf_counter()
    outcome = run_sweep(cfg)
    wall = time.perf_counter() - start
    trials = Path(outcome.sweep_dir) / "trials"
    per_trial = {
        str(row.values["train.learning_rate"]): {
            "status": row.status,
            "reported_step": row.step,
            "trained_steps": trained_steps(trials / row.trial_id),
            "eval_loss": row.metric,
        }
        for row in outcome.rows
    }
    assert outcome.best is not None, f"{scheduler}: no trial reported eval_loss"
    return {
        "wall_s": round(wall, 1),
        "trial_steps": sum(int(t["trained_steps"]) for t in per_trial.values()),  # type: ignore[call-overload]
        "best_learning_rate": outcome.best.values["train.learning_rate"],
        "best_eval_loss": outcome.best.metric,
        "stopped_early": sum(row.status == "stopped early" for row in outcome.rows),
        "trials": per_trial,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--lrs", default="1e-3,3e-5,1e-2,1e-4,3e-3,3e-4", help="grid, in the order trials start")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    lrs = [float(x) for x in args.lrs.split(",")]

    from raytune_ft.train import start_ray

    start_ray()
    with tempfile.TemporaryDirectory(prefix="raytune_ft-bench-tune-") as storage:
        fifo = run("fifo", args.steps, lrs, storage)
        asha = run("asha", args.steps, lrs, storage)
    config = {
        "model": "builtin:smollm2-135m-instruct", "data": "alpaca_1k (40 rows eval)", "cutoff_len": 256,
        "lora_rank": 8, "batch": 4, "steps_per_trial": args.steps, "eval_steps": 5,
        "learning_rates": lrs, "asha": {"grace_period": 5, "reduction_factor": 3}, "trial_workers": 1,
    }  # fmt: skip
    result = {
        "benchmark": "tune_asha",
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "config": config,
        "fifo": fifo,
        "asha": asha,
        "trial_steps_saved": round(1 - asha["trial_steps"] / fifo["trial_steps"], 3),  # type: ignore[operator]
        "wall_ratio_asha_over_fifo": round(asha["wall_s"] / fifo["wall_s"], 3),  # type: ignore[operator]
        "same_best_config": asha["best_learning_rate"] == fifo["best_learning_rate"],
        "note": "one pair (each sweep takes 10-20 minutes here); the trials are deterministic (same seed), so "
        "the trial-steps and best config do not vary from run to run, only the wall times",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k not in ("fifo", "asha")}, indent=2))
    print(f"fifo: {fifo['trial_steps']} trial-steps in {fifo['wall_s']} s, best lr {fifo['best_learning_rate']}")
    print(f"asha: {asha['trial_steps']} trial-steps in {asha['wall_s']} s, best lr {asha['best_learning_rate']}")


if __name__ == "__main__":
    main()
