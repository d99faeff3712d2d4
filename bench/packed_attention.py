"""Peak memory and step time of a packed row's forward + backward, by attention kernel, on CPU.

One row of ``--seq`` tokens holds several samples (lengths drawn from alpaca_1k's tokenized rows, packed by
``raytune_ft.data.pack_samples``), position ids restarting at each, as ``data.packing`` and padding-free
batches feed the model. LoRA (rank 16 on every linear layer) trains on the model, so the backward pass runs
through every attention layer. Kernels:

- ``sdpa``: ours (``model.attn_implementation: sdpa``), PyTorch's sdpa causally on each sample, no mask;
- ``dense``: transformers' own sdpa path, which builds a seq x seq mask for the packed row.

Each measurement is a fresh process: it builds the model, runs one step (warm-up), returns freed memory to
the system (``malloc_trim``), resets Linux's peak-RSS mark (VmHWM), runs ``--steps`` more and records the peak
above the resident size before them and the median step time. Kernels alternate ``--repeats`` times in one
invocation; medians are reported. Results: bench/results/packed_attention_{shape}.json.

    .venv/bin/python bench/packed_attention.py --shape builtin --seq 2048        # SmolLM2-135M
    .venv/bin/python bench/packed_attention.py --shape tiny --seq 2048 8192      # 2 layers: attention dominates

The builtin model at 8192 tokens needs more memory than this 24 GiB machine has (its activations alone).

``tests/unit/test_packed_attention_memory.py`` runs one measurement per kernel on the tiny shape at 8192.
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
RESULTS = ROOT / "bench" / "results"
KERNELS = {"sdpa": "sdpa", "dense": "dense"}
TINY = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2}  # fmt: skip


def _model(shape: str, kernel: str) -> tuple[object, int]:
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from raytune_ft.config import AdapterConfig
    from raytune_ft.models import apply_adapter, resolve_model_source
    from raytune_ft.models.attention import transformers_attention

    implementation = "sdpa" if kernel == "dense" else transformers_attention("sdpa", "cpu")
    torch.manual_seed(0)
    if shape == "tiny":
        config = LlamaConfig(vocab_size=1024, max_position_embeddings=16384, **TINY)  # type: ignore[arg-type]
        model = AutoModelForCausalLM.from_config(config, attn_implementation=implementation)
    else:
        source = resolve_model_source("builtin:smollm2-135m-instruct")
        model = AutoModelForCausalLM.from_pretrained(source, attn_implementation=implementation)
    model = apply_adapter(model, AdapterConfig(type="lora", rank=16, alpha=32, target=["all"]))
    return model, int(model.config.vocab_size)


def _packed_row(seq: int, vocab: int) -> dict[str, object]:
    import torch

    from raytune_ft.data import pack_samples

    generator = torch.Generator().manual_seed(0)
    lengths = [int(n) for n in torch.randint(64, 2049, (4 * seq // 64,), generator=generator)]
    samples = [([1] * n, [1] * n) for n in lengths]
    row = next(r for r in pack_samples(samples, seq) if len(r[0]) >= seq - 64)
    width = len(row[0])
    ids = torch.randint(0, vocab, (1, width), generator=generator)
    return {"input_ids": ids, "labels": ids, "position_ids": torch.tensor([row[2]]), "use_cache": False}


def child(shape: str, kernel: str, seq: int, steps: int) -> None:
    import ctypes
    import gc
    import time

    import torch

    torch.set_num_threads(max(1, torch.get_num_threads()))
    model, vocab = _model(shape, kernel)
    batch = _packed_row(seq, vocab)

    def step() -> float:
        loss = model(**batch).loss  # type: ignore[operator]
        loss.backward()
        model.zero_grad(set_to_none=True)  # type: ignore[attr-defined]
        return float(loss)

    step()
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")
    before = _status("VmRSS")
    times, loss = [], 0.0
    for _ in range(steps):
        started = time.perf_counter()
        loss = step()
        times.append(time.perf_counter() - started)
    peak = _status("VmHWM") - before
    print(json.dumps({"kernel": kernel, "seq": seq, "peak_mib": peak, "median_s": statistics.median(times),
                      "loss": loss}))  # fmt: skip


def _status(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"{key} not in /proc/self/status")


def measure(shape: str, kernel: str, seq: int, steps: int = 1) -> dict[str, float]:
    """One fresh-process measurement (see the module docstring)."""
    command = [sys.executable, __file__, "--child", kernel, "--shape", shape, "--seq", str(seq), "--steps", str(steps)]
    out = subprocess.run(command, check=True, capture_output=True, text=True, cwd=ROOT).stdout
    result: dict[str, float] = json.loads(out.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", choices=["builtin", "tiny"], default="builtin")
    parser.add_argument("--seq", type=int, nargs="+", default=[2048])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--child", choices=list(KERNELS))
    parser.add_argument("--out", type=Path, help="default: bench/results/packed_attention_{shape}.json")
    args = parser.parse_args()
    if args.child:
        child(args.shape, args.child, args.seq[0], args.steps)
        return
    rows = []
    for seq in args.seq:
        runs: dict[str, list[dict[str, float]]] = {kernel: [] for kernel in KERNELS}
        for _ in range(args.repeats):
            for kernel in KERNELS:
                runs[kernel].append(measure(args.shape, kernel, seq, args.steps))
        row = {"seq": seq}
        for kernel, results in runs.items():
            row[f"{kernel}_peak_mib"] = statistics.median(r["peak_mib"] for r in results)
            row[f"{kernel}_median_s"] = statistics.median(r["median_s"] for r in results)
        row["memory_ratio"] = row["sdpa_peak_mib"] / row["dense_peak_mib"]
        row["speedup"] = row["dense_median_s"] / row["sdpa_median_s"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    report = {"shape": args.shape, "repeats": args.repeats, "steps": args.steps, "host": platform.node(),
              "cpus": _cpus(), "rows": rows}  # fmt: skip
    out = args.out or RESULTS / f"packed_attention_{args.shape}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {out}")


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0))


if __name__ == "__main__":
    main()
