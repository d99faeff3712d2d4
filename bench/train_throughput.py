"""Training throughput of the quickstart-shaped run on Ray vs the same steps in one plain process.

Reference configuration (shared/bench-data/README.md): SmolLM2-135M-Instruct, LoRA r8 on all
linear layers, cutoff 512, batch 4 per worker, lr 1e-4 cosine, fp32, alpaca_1k. The Ray run uses
2 DDP workers (gloo, 1 thread each); the baseline runs the identical step core without Ray in one
process with 2 threads on the same number of samples per step. Both run in this invocation on
this machine; the ratio is the figure to quote. Results: bench/results/train_throughput.json.

    .venv/bin/python bench/train_throughput.py [--steps 30] [--warmup 5]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
BENCH_DATA = ROOT.parent / "shared" / "bench-data" / "alpaca_1k.json"
RESULTS = ROOT / "bench" / "results" / "train_throughput.json"


def job_overrides(steps: int, workers: int, storage: str, run: str) -> list[str]:
    return [
        "model.source=builtin:smollm2-135m-instruct",
        f"data.dataset={BENCH_DATA}",
        "data.cutoff_len=512",
        "adapter.type=lora",
        "adapter.rank=8",
        "adapter.alpha=16",
        "adapter.target=all",
        "train.per_device_batch_size=4",
        "train.learning_rate=1e-4",
        "train.lr_scheduler=cosine",
        f"train.max_steps={steps}",
        "train.logging_steps=1",
        f"train.save_steps={steps}",
        f"train.storage_path={storage}",
        f"train.run_name={run}",
        f"scaling.num_workers={workers}",
    ]


class RssSampler:
    """Peak summed RSS of processes whose command line matches ``marker`` (Ray workers aren't our children)."""

    def __init__(self, marker: str) -> None:
        self.marker, self.peak, self._stop = marker, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            total = 0
            for proc in psutil.process_iter(["cmdline", "memory_info"]):
                if self.marker in " ".join(proc.info["cmdline"] or []) and proc.info["memory_info"]:
                    total += proc.info["memory_info"].rss
            self.peak = max(self.peak, total)


def summarize(records: list[dict[str, float]], warmup: int) -> dict[str, float]:
    steady = [r for r in records if r["step"] > warmup]
    s_per_step = statistics.median(r["s_per_step"] for r in steady)
    return {
        "steps_measured": len(steady),
        "median_s_per_step": s_per_step,
        "median_nonpad_tokens_per_s": statistics.median(r["tokens_per_s"] for r in steady),
        "median_padded_tokens_per_s": statistics.median(r["padded_tokens_per_s"] for r in steady),
        "padding_efficiency": sum(r["tokens_per_s"] for r in steady) / sum(r["padded_tokens_per_s"] for r in steady),
    }


def run_ray(steps: int, warmup: int, workers: int) -> dict[str, float]:
    from raytune_ft.config import load_config
    from raytune_ft.train import run_training

    with tempfile.TemporaryDirectory() as storage, RssSampler("RayTrainWorker") as rss:
        started = time.perf_counter()
        outcome = run_training(load_config(None, job_overrides(steps, workers, storage, "bench")))
        wall = time.perf_counter() - started
        records = [json.loads(x) for x in (Path(outcome.run_dir) / "metrics.jsonl").read_text().splitlines()]
    return {**summarize(records, warmup), "wall_s": wall, "peak_rss_workers_gb": rss.peak / 1e9}


def run_baseline(steps: int, warmup: int, workers: int) -> dict[str, float]:
    """The same step core in a child process without Ray (its peak RSS is measured by the OS)."""
    cmd = [sys.executable, __file__, "--baseline-child", str(steps), str(workers)]
    started = time.perf_counter()
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "2"})
    wall = time.perf_counter() - started
    child = json.loads(out.stdout.strip().splitlines()[-1])
    return {**summarize(child["records"], warmup), "wall_s": wall, "peak_rss_gb": child["peak_rss_gb"]}


def baseline_child(steps: int, workers: int) -> None:
    import resource

    import torch

    from raytune_ft.config import load_config
    from raytune_ft.data import encode_batch, normalize_row, pad_batch, render_segments
    from raytune_ft.train import build_training

    torch.set_num_threads(2)
    cfg = load_config(None, job_overrides(steps, 1, "/tmp", "baseline"))
    core, tokenizer = build_training(cfg, steps, torch.device("cpu"))
    rows = json.loads(BENCH_DATA.read_text())
    batch_rows = 4 * workers  # the same samples per optimizer step as the Ray run
    records = []
    for step in range(1, steps + 1):
        chunk = rows[(step - 1) * batch_rows : step * batch_rows]
        convs = [render_segments(tokenizer, normalize_row(r, {}, "bench"), False) for r in chunk]
        enc = [e for e in encode_batch(tokenizer, convs, 512) if e is not None]
        # one micro-batch per "worker", as each DDP worker pads its own batch of 4
        parts = [enc[i : i + 4] for i in range(0, len(enc), 4)]
        batches = [pad_batch([e[0] for e in p], [e[1] for e in p], tokenizer.pad_token_id) for p in parts]
        started = time.perf_counter()
        stats = core.step(batches)
        elapsed = time.perf_counter() - started
        records.append(
            {
                "step": step,
                "s_per_step": elapsed,
                "tokens_per_s": stats.tokens / elapsed,
                "padded_tokens_per_s": stats.padded_tokens / elapsed,
            }
        )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9
    print(json.dumps({"records": records, "peak_rss_gb": peak}))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--baseline-child":
        baseline_child(int(sys.argv[2]), int(sys.argv[3]))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5, help="steps excluded from the medians")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    baseline = run_baseline(args.steps, args.warmup, args.workers)
    ray_run = run_ray(args.steps, args.warmup, args.workers)
    result = {
        "benchmark": "train_throughput",
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "load_avg_1m": os.getloadavg()[0]},
        "config": {
            "model": "builtin:smollm2-135m-instruct",
            "dataset": "alpaca_1k",
            "lora_rank": 8,
            "cutoff_len": 512,
            "batch_per_worker": 4,
            "workers": args.workers,
            "steps": args.steps,
        },
        "raytune_ft_ray_ddp": ray_run,
        "baseline_single_process": baseline,
        "ratio_nonpad_tokens_per_s": ray_run["median_nonpad_tokens_per_s"] / baseline["median_nonpad_tokens_per_s"],
        "command": "python bench/train_throughput.py " + " ".join(sys.argv[1:]),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
