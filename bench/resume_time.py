"""Recovery time after a lost training worker, against its lower bound.

One Ray run on the reference configuration (shared/bench-data/README.md: SmolLM2-135M-Instruct,
LoRA r8 on all linear layers, cutoff 512, batch 4 per worker, lr 1e-4 cosine, fp32, alpaca_1k) with
2 workers, a checkpoint every ``--save-every`` steps and ``scaling.max_failures`` set. A fault drill
(``raytune_ft.train.faults``) SIGKILLs one worker 2 steps after each of ``--kills`` checkpoints. For
each kill it records:

- recovery: seconds from the kill to the first step logged after the resume;
- steps lost: steps logged before the kill that had to be trained again.

The lower bound, measured in the same invocation on the same machine: a fresh Python process that
imports the stack, builds the model and restores the checkpoint the run resumed from (model + adapter
+ optimizer + schedule), plus one training step (the run's median step time). That is what any
restart must pay; the rest (failure detection, Ray Train tearing down and recreating the worker
group, the process group, the data stream) is Ray's share. Results: bench/results/resume_time.json.

    .venv/bin/python bench/resume_time.py [--kills 3] [--save-every 4]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from train_throughput import job_overrides  # bench/ is this script's first import path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "resume_time.json"


def overrides(steps: int, save_every: int, kills: int, storage: str) -> list[str]:
    """The reference configuration (as ``train_throughput.py`` runs it), with checkpoints and retries."""
    return [
        *job_overrides(steps, 2, storage, "resume"),
        f"train.save_steps={save_every}",
        f"scaling.max_failures={kills}",
    ]


def run_with_kills(kills: int, save_every: int, storage: str) -> tuple[list[dict[str, float]], list[str]]:
    """Train with a kill 2 steps after each of ``kills`` checkpoints; per kill: recovery and steps lost."""
    from raytune_ft.config import load_config
    from raytune_ft.train import run_training
    from raytune_ft.train.faults import FaultDrill, logged_steps

    at_steps = [save_every * (i + 1) + 2 for i in range(kills)]
    steps = at_steps[-1] + save_every
    drill = FaultDrill(Path(storage) / "resume", at_steps=at_steps)
    drill.start()
    outcome = run_training(load_config(None, overrides(steps, save_every, kills, storage)))
    if drill.error is not None:
        raise drill.error
    final = logged_steps(outcome.run_dir)
    assert [r["step"] for r in final] == list(range(1, steps + 1)), "the run must finish every step once"
    figures = []
    for kill in drill.kills:
        resumed_at = max(save_every * (kill.step // save_every), 0)
        first = final[resumed_at]  # the first step after the resume (step resumed_at + 1)
        assert first["time"] > kill.time, (kill, first)
        figures.append(
            {
                "killed_at_step": kill.step,
                "resumed_from_step": resumed_at,
                "steps_lost": kill.step - resumed_at,
                "recovery_s": first["time"] - kill.time,
            }
        )
    checkpoints = [str(Path(outcome.run_dir) / f"checkpoint-{f['resumed_from_step']:06d}") for f in figures]
    step_s = statistics.median(r["s_per_step"] for r in final if r["step"] > 1)
    return [{**f, "median_step_s": step_s} for f in figures], checkpoints


def lower_bound(checkpoint: str, storage: str) -> dict[str, float]:
    """A fresh process: imports, then model + adapter + optimizer state from ``checkpoint``."""
    cmd = [sys.executable, __file__, "--restore-child", checkpoint, storage]
    started = time.perf_counter()
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    total = time.perf_counter() - started
    child = json.loads(out.stdout.strip().splitlines()[-1])
    return {"process_and_imports_s": total - child["restore_s"], "restore_s": child["restore_s"], "total_s": total}


def restore_child(checkpoint: str, storage: str) -> None:
    import torch

    from raytune_ft.config import load_config
    from raytune_ft.train import build_training
    from raytune_ft.train.checkpoint import restore_state

    cfg = load_config(None, overrides(100, 4, 1, storage))
    started = time.perf_counter()
    core, _ = build_training(cfg, 100, torch.device("cpu"), Path(checkpoint))
    state = restore_state(Path(checkpoint), core)
    assert state.global_step > 0
    print(json.dumps({"restore_s": time.perf_counter() - started}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=3, help="workers to kill, one after each checkpoint")
    parser.add_argument("--save-every", type=int, default=4, help="train.save_steps")
    parser.add_argument("--restore-child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.restore_child:
        restore_child(*args.restore_child)
        return
    with tempfile.TemporaryDirectory(prefix="raytune_ft-resume-") as storage:
        print(f"== training with {args.kills} worker kills", flush=True)
        kills, checkpoints = run_with_kills(args.kills, args.save_every, storage)
        print("== lower bound: fresh process, model + checkpoint restore", flush=True)
        bounds = [lower_bound(checkpoint, storage) for checkpoint in checkpoints]
    step_s = kills[0]["median_step_s"]
    recovery = statistics.median(k["recovery_s"] for k in kills)
    bound = statistics.median(b["total_s"] for b in bounds) + step_s
    result = {
        "machine": f"{platform.node()} ({platform.processor() or platform.machine()}), 2 workers on Ray",
        "config": "SmolLM2-135M-Instruct, LoRA r8 all, cutoff 512, batch 4/worker, alpaca_1k, fp32",
        "save_steps": args.save_every,
        "kills": kills,
        "lower_bound_runs": bounds,
        "median_recovery_s": recovery,
        "median_lower_bound_s": bound,
        "recovery_over_lower_bound": recovery / bound,
        "median_steps_lost": statistics.median(k["steps_lost"] for k in kills),
        "note": "lower bound = fresh process + imports + model/adapter/optimizer restore + one median step",
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k not in ("kills", "lower_bound_runs")}, indent=2))


if __name__ == "__main__":
    main()
