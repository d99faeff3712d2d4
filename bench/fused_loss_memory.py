"""Peak memory of one training step with the LM head and loss in chunks, against the plain head + loss.

The builtin model (SmolLM2-135M-Instruct, vocabulary 49,152, float32) with LoRA r8 on all linear layers
(the reference configuration of shared/bench-data/README.md), one row of ``--cutoff`` tokens of alpaca_1k
text, every token learned (the worst case: every position needs its logits). Each measurement is a fresh
process: it loads the model and runs one warm-up step; then Linux's peak-RSS mark (VmHWM) is reset, one
step runs (forward + backward), and the peak above the resident size before the step is the step's peak.
``plain`` computes the full logits and ``F.cross_entropy`` (``causal_lm_loss_sum``), ``chunked`` is the SFT
objective (``raytune_ft.train.fused_loss``). The two alternate ``--repeats`` times in one invocation;
medians are reported. Results: bench/results/fused_loss_memory.json.

    .venv/bin/python bench/fused_loss_memory.py [--cutoff 2048] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "fused_loss_memory.json"
DATA = ROOT.parent / "shared" / "bench-data" / "alpaca_1k.json"


def child(mode: str, cutoff: int) -> None:
    import time

    import psutil
    import torch

    from raytune_ft.config import load_config
    from raytune_ft.train import build_training
    from raytune_ft.train.objectives import SFTObjective, causal_lm_loss_sum, model_inputs

    cfg = load_config(None, ["model.source=builtin:smollm2-135m-instruct", "adapter.rank=8", "adapter.alpha=16"])
    core, tokenizer = build_training(cfg, 10, torch.device("cpu"))
    text = " ".join(f"{row['instruction']} {row['output']}" for row in json.loads(DATA.read_text()))
    ids = torch.tensor([tokenizer(text)["input_ids"][:cutoff]])
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}

    def step() -> None:
        if mode == "chunked":
            loss = SFTObjective().loss_sum(core.model, batch)
        else:
            loss = causal_lm_loss_sum(core.model(**model_inputs(batch)).logits, batch["labels"])
        loss.backward()
        core.model.zero_grad(set_to_none=True)

    step()  # warm-up: allocator pools and lazy initialisation are not the step's
    Path("/proc/self/clear_refs").write_text("5")  # Linux: reset the peak (VmHWM) to the current size
    before = psutil.Process().memory_info().rss
    start = time.perf_counter()
    step()
    seconds = time.perf_counter() - start
    status = Path("/proc/self/status").read_text().splitlines()
    peak = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) * 1024
    print(json.dumps({"mode": mode, "step_peak_bytes": peak - before, "rss_before": before, "step_s": seconds}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cutoff", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", choices=["plain", "chunked"])
    args = parser.parse_args()
    if args.child:
        child(args.child, args.cutoff)
        return
    runs: dict[str, list[dict[str, float]]] = {"plain": [], "chunked": []}
    for _ in range(args.repeats):
        for mode in runs:
            command = [sys.executable, __file__, "--child", mode, "--cutoff", str(args.cutoff)]
            out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            runs[mode].append(json.loads(out.strip().splitlines()[-1]))
    summary = {
        mode: {
            "median_step_peak_mib": statistics.median(r["step_peak_bytes"] for r in rows) / 2**20,
            "median_step_s": statistics.median(r["step_s"] for r in rows),
        }
        for mode, rows in runs.items()
    }
    saved = summary["plain"]["median_step_peak_mib"] - summary["chunked"]["median_step_peak_mib"]
    ratio = summary["chunked"]["median_step_peak_mib"] / summary["plain"]["median_step_peak_mib"]
    for mode, row in summary.items():
        print(f"{mode:>8}: step peak {row['median_step_peak_mib']:7.0f} MiB, step {row['median_step_s']:.2f} s")
    print(f"saved {saved:.0f} MiB per step ({ratio:.2f}x the plain peak) at cutoff {args.cutoff}")
    RESULTS.write_text(json.dumps({
        "machine": platform.processor() or platform.machine(), "cutoff": args.cutoff, "repeats": args.repeats,
        "model": "SmolLM2-135M-Instruct, LoRA r8 all, float32, every token learned",
        "summary": summary, "saved_mib": saved, "peak_ratio": ratio, "runs": runs,
    }, indent=2) + "\n")  # fmt: skip


if __name__ == "__main__":
    main()
