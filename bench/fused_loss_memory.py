"""Peak memory of the LM head + loss with the head and loss in chunks, against the plain head + loss.

The builtin model (SmolLM2-135M-Instruct: hidden 576, vocabulary 49,152, float32) and ``--cutoff`` positions,
every one learned (the worst case: every position needs its logits). Each measurement is a fresh process: it
loads the model, takes the final hidden states of one row of alpaca_1k text, runs the head + loss forward and
backward once (warm-up), returns freed memory to the system (``malloc_trim``) and resets Linux's peak-RSS mark
(VmHWM); then it runs the head + loss forward and backward again, the hidden states requiring a gradient as
in training (the head frozen, as under LoRA), and records the peak above the resident size before it.
``plain`` computes the full logits and ``F.cross_entropy`` (``causal_lm_loss_sum``'s arithmetic), ``chunked``
is ``raytune_ft.train.fused_loss``. The rest of a training step (the decoder's activations, several GiB at
this length) is the same for both and left out, so the figure is what the change saves. The two alternate
``--repeats`` times in one invocation; medians are reported. Results: bench/results/fused_loss_memory.json.

    .venv/bin/python bench/fused_loss_memory.py [--cutoff 2048] [--repeats 5]
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
    import ctypes
    import gc
    import time

    import psutil
    import torch
    import torch.nn.functional as F

    from raytune_ft.config import ModelConfig
    from raytune_ft.models import load_causal_lm, load_tokenizer, resolve_model_source
    from raytune_ft.train.fused_loss import chunked_linear_cross_entropy

    source = resolve_model_source("builtin:smollm2-135m-instruct")
    model, tokenizer = load_causal_lm(ModelConfig(), source).eval(), load_tokenizer(source)
    text = " ".join(f"{row['instruction']} {row['output']}" for row in json.loads(DATA.read_text()))
    ids = torch.tensor([tokenizer(text)["input_ids"][: cutoff + 1]])
    with torch.no_grad():
        hidden = model.model(input_ids=ids[:, :-1]).last_hidden_state[0].clone()  # (cutoff, hidden)
    weight, targets = model.get_output_embeddings().weight.detach(), ids[0, 1:]

    def head_and_loss() -> None:
        states = hidden.clone().requires_grad_(True)
        if mode == "chunked":
            loss = chunked_linear_cross_entropy(states, weight, targets)
        else:
            loss = F.cross_entropy((states @ weight.T).float(), targets, reduction="sum")
        loss.backward()

    head_and_loss()  # warm-up: lazy initialisation is not the measurement's
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed memory back, so the peak below is this call's
    Path("/proc/self/clear_refs").write_text("5")  # Linux: reset the peak (VmHWM) to the current size
    before = psutil.Process().memory_info().rss
    start = time.perf_counter()
    head_and_loss()
    seconds = time.perf_counter() - start
    status = Path("/proc/self/status").read_text().splitlines()
    peak = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) * 1024
    print(json.dumps({"mode": mode, "peak_bytes": peak - before, "rss_before": before, "seconds": seconds}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cutoff", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=5)
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
            "median_peak_mib": statistics.median(r["peak_bytes"] for r in rows) / 2**20,
            "median_seconds": statistics.median(r["seconds"] for r in rows),
        }
        for mode, rows in runs.items()
    }
    saved = summary["plain"]["median_peak_mib"] - summary["chunked"]["median_peak_mib"]
    ratio = summary["chunked"]["median_peak_mib"] / summary["plain"]["median_peak_mib"]
    for mode, row in summary.items():
        print(f"{mode:>8}: head + loss peak {row['median_peak_mib']:7.0f} MiB, {row['median_seconds']:.3f} s")
    print(f"saved {saved:.0f} MiB per step ({ratio:.2f}x the plain peak) at cutoff {args.cutoff}")
    RESULTS.write_text(json.dumps({
        "machine": platform.processor() or platform.machine(), "cutoff": args.cutoff, "repeats": args.repeats,
        "model": "SmolLM2-135M-Instruct's LM head (frozen), float32, every position learned",
        "summary": summary, "saved_mib": saved, "peak_ratio": ratio, "runs": runs,
    }, indent=2) + "\n")  # fmt: skip


if __name__ == "__main__":
    main()
