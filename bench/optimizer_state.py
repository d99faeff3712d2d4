"""Optimizer state per optimizer, full tuning of the builtin model, against AdamW in the same invocation.

SmolLM2-135M-Instruct (the builtin model, float32), every weight trainable; for each ``train.optimizer`` the
step core (no Ray) builds the model and optimizer and runs ``--steps`` optimizer steps on 4 rows of the
reference data (shared/bench-data) at cutoff 256. It records the bytes held in the optimizer state (every
tensor in ``optimizer.state``, GaLore/APOLLO projection matrices included) and its ratio to AdamW's, and the
median step time (noisy on a shared machine: compare ratios within one invocation). GaLore and APOLLO run
with LLaMA-Factory's example settings (rank 128); Muon keeps AdamW state for the embeddings only.
Results: bench/results/optimizer_state.json.

    .venv/bin/python bench/optimizer_state.py [--steps 3]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "optimizer_state.json"
DATA = ROOT.parent / "shared" / "bench-data" / "alpaca_1k.json"
OPTIMIZERS = ["adamw", "adamw_fused", "adamw_8bit", "paged_adamw_8bit", "adafactor", "galore_adamw",
              "apollo_adamw", "muon", "sgd"]  # fmt: skip


def state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of every tensor in the optimizer state, and of the tensors inside its objects (projections)."""
    tensors = []
    for state in optimizer.state.values():
        for value in state.values():
            tensors += (
                [value]
                if torch.is_tensor(value)
                else [v for v in getattr(value, "__dict__", {}).values() if torch.is_tensor(v)]
            )
    return sum(t.numel() * t.element_size() for t in tensors)


def batch(tokenizer: Any) -> dict[str, torch.Tensor]:
    from raytune_ft.data import encode_batch, normalize_row, pad_batch, render_segments

    rows = json.loads(DATA.read_text())[:4]
    convs = [render_segments(tokenizer, normalize_row(row, {}, "bench"), False) for row in rows]
    encoded = [e for e in encode_batch(tokenizer, convs, 256) if e is not None]
    return pad_batch([e[0] for e in encoded], [e[1] for e in encoded], tokenizer.pad_token_id)


def measure(name: str, steps: int) -> dict[str, Any]:
    from raytune_ft.config import load_config
    from raytune_ft.train import build_training

    cfg = load_config(
        None,
        ["model.source=builtin:smollm2-135m-instruct", "adapter.type=full", f"train.optimizer={name}",
         "train.learning_rate=1e-5", "train.galore.rank=128", "train.apollo.rank=128"],
    )  # fmt: skip
    core, tokenizer = build_training(cfg, steps, torch.device("cpu"))
    rows = batch(tokenizer)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        core.step([rows])
        times.append(time.perf_counter() - start)
    params = sum(p.numel() for p in core.model.parameters() if p.requires_grad)
    return {"optimizer": name, "trainable_params": params, "state_bytes": state_bytes(core.optimizer),
            "median_step_s": statistics.median(times)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    rows = [measure(name, args.steps) for name in OPTIMIZERS]
    adamw = rows[0]
    for row in rows:
        row["state_vs_adamw"] = round(row["state_bytes"] / adamw["state_bytes"], 3)
        row["step_time_vs_adamw"] = round(row["median_step_s"] / adamw["median_step_s"], 2)
        row["state_bytes_per_param"] = round(row["state_bytes"] / row["trainable_params"], 2)
        print(f"{row['optimizer']:>17}: state {row['state_bytes'] / 2**20:8.1f} MiB ({row['state_vs_adamw']:.3f}x "
              f"AdamW), step {row['median_step_s']:.2f} s ({row['step_time_vs_adamw']:.2f}x)")  # fmt: skip
    RESULTS.write_text(json.dumps({"machine": platform.processor() or platform.machine(), "steps": args.steps,
                                   "model": "SmolLM2-135M-Instruct, full tuning, float32", "rows": rows}, indent=2)
                       + "\n")  # fmt: skip


if __name__ == "__main__":
    main()
