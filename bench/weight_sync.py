"""Weight sync of whole weights: ``rollout.weight_sync: store`` against ``broadcast``, in one invocation.

The same GRPO job runs once per mode per repeat, the modes alternating: SmolLM2-135M-Instruct (the bundled
model, 135M parameters, 538 MB in float32), full tuning, the bundled arithmetic prompts, 4 prompts x 4 answers,
16 new tokens, one engine placed apart (``placement: separate``, 0.5 CPU). After every optimizer step the whole
model goes to the engine:

- store: rank 0 writes it as safetensors into Ray's object store (``sync/publish_s``); the engine fetches it,
  reads it and reloads its model when the next generation asks for that version (``sync/engine_s``);
- broadcast: rank 0 and the engine form a gloo group and the tensors are broadcast in 256 MiB buckets and
  reloaded while rank 0 waits (all of it in ``sync/publish_s``; ``sync/engine_s`` is 0).

Reported per run: the median over steps 2.. of publish + engine seconds (the time the weights take to reach
the engine as the step sees it) and of the step time. Results: bench/results/weight_sync.json.

    .venv/bin/python bench/weight_sync.py [--steps 6] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "weight_sync.json"
MODES = ("store", "broadcast")
JOB = {"model": "SmolLM2-135M-Instruct", "adapter": "full", "prompts_per_step": 4, "group_size": 4,
       "max_new_tokens": 16, "placement": "separate"}  # fmt: skip


def run(mode: str, steps: int, storage: str, name: str) -> dict[str, Any]:
    overrides = [
        "adapter.type=full", "train.learning_rate=1e-5", f"train.max_steps={steps}", f"train.save_steps={steps}",
        f"train.storage_path={storage}", f"train.run_name={name}", "rollout.prompts_per_step=4",
        "method.group_size=4", "method.max_new_tokens=16", "rollout.placement=separate",
        "rollout.cpus_per_engine=0.5", f"rollout.weight_sync={mode}",
    ]  # fmt: skip
    config = ROOT / "configs" / "grpo_math.yaml"
    command = [str(ROOT / ".venv" / "bin" / "raytune-ft"), "train", str(config), *overrides]
    log = Path(storage, f"{name}.log")
    start = time.time()
    with log.open("w") as sink:
        done = subprocess.run(command, stdout=sink, stderr=subprocess.STDOUT)
    if done.returncode:
        raise SystemExit(f"raytune-ft train failed ({done.returncode}):\n{log.read_text()[-4000:]}")
    wall = time.time() - start
    logged = [json.loads(line) for line in Path(storage, name, "metrics.jsonl").read_text().splitlines()]
    warm = logged[1:] or logged
    sync = [m["sync/publish_s"] + m["sync/engine_s"] for m in warm]
    return {
        "wall_s": wall,
        "sync_s": sync,
        "median_sync_s": statistics.median(sync),
        "median_publish_s": statistics.median(m["sync/publish_s"] for m in warm),
        "median_engine_s": statistics.median(m["sync/engine_s"] for m in warm),
        "median_step_s": statistics.median(m["s_per_step"] for m in warm),
        "logprob_gap": max(m["rollout/logprob_gap"] for m in logged),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    runs: dict[str, list[dict[str, Any]]] = {mode: [] for mode in MODES}
    with tempfile.TemporaryDirectory(prefix="sync-bench-") as tmp:
        for repeat in range(args.repeats):
            for mode in MODES:
                result = run(mode, args.steps, tmp, f"{mode}-{repeat}")
                runs[mode].append(result)
                print(f"{mode} #{repeat}: sync {result['median_sync_s']:.2f} s, step {result['median_step_s']:.2f} s",
                      flush=True)  # fmt: skip
    medians = {mode: statistics.median(r["median_sync_s"] for r in runs[mode]) for mode in MODES}
    steps = {mode: statistics.median(r["median_step_s"] for r in runs[mode]) for mode in MODES}
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} CPUs, no GPU",
        "job": JOB | {"steps": args.steps},
        "runs": runs,
        "median_sync_s": medians,
        "median_step_s": steps,
        "broadcast_over_store_sync": medians["broadcast"] / medians["store"],
    }
    RESULTS.write_text(json.dumps(result, indent=1) + "\n")
    print(f"sync: store {medians['store']:.2f} s, broadcast {medians['broadcast']:.2f} s "
          f"({result['broadcast_over_store_sync']:.2f}x) -> {RESULTS}")  # fmt: skip


if __name__ == "__main__":
    main()
