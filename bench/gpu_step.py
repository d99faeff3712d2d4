"""The training step on one GPU without Ray: ours against plain transformers + peft, LoRA and full tuning.

Qwen2-shaped models with random weights, built from configs: Qwen2.5-0.5B's and Qwen2.5-1.5B's shapes.
They train in bf16 on packed rows of ``--seqs`` tokens (2048 and 8192), ``--tokens`` tokens a step. Each
row holds samples of 64 to 1024 tokens with restarting position ids, so attention must stay inside each
sample. Two implementations run the same batches:

- ``raytune_ft``: our step core (``StepCore``). It uses the SFT objective with the chunked LM head + loss,
  ``train.precision: bf16`` (bf16 base, autocast, float32 trainable weights and AdamW state),
  ``model.attn_implementation: auto`` (FlashAttention when installed, else our per-sample sdpa), and
  clipping.
- ``transformers+peft``: what a user writes by hand. It uses ``get_peft_model`` (LoRA r16 on all linear
  layers), transformers' own sdpa (a dense mask for the packed rows), ``labels=`` loss, bf16 autocast
  over the same dtypes, torch AdamW and clipping.

MFU = k x N x tokens/s / peak. N counts the parameters a token's forward multiplies by (the tied embedding
once, as the LM head). k is 4 for LoRA (forward + input gradients) and 6 for full tuning. The peak is the
card's dense bf16 FLOP/s (``PEAK_BF16``). Targets for our LoRA: MFU >= 40% on an H100, >= 1.5x the
baseline's tokens/s, and <= 0.6x its peak memory (``torch.cuda.max_memory_allocated``). Results:
bench/results/gpu_step.json. ``bench/gpu_suite.sh`` runs it on the device machine.

    python bench/gpu_step.py [--shapes qwen2-0.5b qwen2-1.5b] [--seqs 2048 8192] [--modes lora full]
    python bench/gpu_step.py --tiny --device cpu --out /tmp/gpu_step_smoke.json   # smoke test, CPU
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "gpu_step.json"
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12}
"""Dense bf16 FLOP/s by card (SXM figures; an H100 PCIe is lower, 756e12)."""
SHAPES = {
    "qwen2-0.5b": {"hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
                   "num_attention_heads": 14, "num_key_value_heads": 2, "vocab_size": 151936},
    "qwen2-1.5b": {"hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28,
                   "num_attention_heads": 12, "num_key_value_heads": 2, "vocab_size": 151936},
    "tiny": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
             "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 1024},
}  # fmt: skip
IMPLEMENTATIONS = ("raytune_ft", "transformers+peft")
TARGETS = {"lora_mfu": 0.40, "lora_speedup": 1.5, "lora_memory_ratio": 0.6}


def build_model(shape: str, device: torch.device, dtype: torch.dtype, attention: str) -> torch.nn.Module:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(**SHAPES[shape], max_position_embeddings=16384, tie_word_embeddings=True)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM._from_config(config, attn_implementation=attention, dtype=dtype)
    return model.to(device)


def packed_batch(rows: int, seq: int, vocab: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """``rows`` rows of ``seq`` tokens, each packed with samples of 64-1024 tokens (positions restart per
    sample; each sample's first token is not learned, as in ``raytune_ft.data.packing``)."""
    ids = torch.randint(0, vocab, (rows, seq), generator=generator)
    positions = torch.zeros(rows, seq, dtype=torch.long)
    labels = ids.clone()
    for row in range(rows):
        start = 0
        while start < seq:
            length = min(int(torch.randint(64, 1025, (1,), generator=generator)), seq - start)
            positions[row, start : start + length] = torch.arange(length)
            labels[row, start] = -100
            start += length
    return {"input_ids": ids, "labels": labels, "position_ids": positions, "attention_mask": torch.ones_like(ids)}


def forward_params(model: torch.nn.Module) -> int:
    """Parameters a token's forward multiplies by: the input embedding is a lookup, not a matmul, but
    tied to the LM head the same matrix is multiplied there, so it counts once."""
    total = sum(p.numel() for p in model.parameters())
    embedding = model.get_input_embeddings().weight  # type: ignore[operator]
    tied = model.get_output_embeddings().weight is embedding  # type: ignore[operator]
    return total if tied else total - embedding.numel()


def ours(mode: str, shape: str, device: torch.device) -> tuple[Callable[[dict[str, torch.Tensor]], float], int]:
    """Our step core as the Ray workers build it; returns a step function and N (forward parameters)."""
    from raytune_ft.config import load_config
    from raytune_ft.models import apply_adapter
    from raytune_ft.models.attention import transformers_attention
    from raytune_ft.train.objectives import SFTObjective
    from raytune_ft.train.precision import build_precision, cast_trainable, compute_precision
    from raytune_ft.train.step import StepCore, build_optimizer, build_scheduler
    from raytune_ft.train.strategies import DDPStrategy

    gpu = device.type == "cuda"
    cfg = load_config(None, [f"adapter.type={mode}", "adapter.rank=16", "adapter.alpha=32", "adapter.target=all",
                             f"model.dtype={'bfloat16' if gpu else 'float32'}", f"scaling.use_gpu={gpu}",
                             "train.max_grad_norm=1.0"])  # fmt: skip
    dtype = getattr(torch, cfg.model.dtype)
    model = build_model(shape, device, dtype, transformers_attention(cfg.model.attn_implementation, device.type))
    n_forward = forward_params(model)
    model = apply_adapter(model, cfg.adapter)
    cast_trainable(model, compute_precision(cfg))
    strategy = DDPStrategy(device, cfg)
    model, optimizer = strategy.prepare(model, lambda m: build_optimizer(m, cfg.train))
    scheduler = build_scheduler(optimizer, cfg.train, 10**6)
    core = StepCore(model, SFTObjective(), strategy, optimizer, scheduler, 1.0, build_precision(cfg, device))

    def step(batch: dict[str, torch.Tensor]) -> float:
        stats = core.step([batch])
        return stats.loss_sum / max(stats.terms, 1)

    return step, n_forward


def baseline(mode: str, shape: str, device: torch.device) -> tuple[Callable[[dict[str, torch.Tensor]], float], int]:
    """Plain transformers + peft: the same dtypes and optimizer, none of our step's machinery."""
    from peft import LoraConfig, get_peft_model

    gpu = device.type == "cuda"
    lora = mode == "lora"
    dtype = torch.bfloat16 if gpu and lora else torch.float32  # full tuning: float32 weights under autocast
    model = build_model(shape, device, dtype, "sdpa")
    n_forward = forward_params(model)
    if lora:
        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear"))  # type: ignore[arg-type]
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4, weight_decay=0.0)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=gpu)

    def step(batch: dict[str, torch.Tensor]) -> float:
        model.train()
        with autocast:
            out = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], labels=batch["labels"])
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(out.loss.detach())

    return step, n_forward


def run_case(implementation: str, mode: str, shape: str, seq: int, args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device(args.device)
    _release(device)
    build = ours if implementation == "raytune_ft" else baseline
    rows = max(1, args.tokens // seq)
    case = {"implementation": implementation, "mode": mode, "shape": shape, "seq": seq, "rows": rows}
    try:
        step, n_forward = build(mode, shape, device)
        generator = torch.Generator().manual_seed(0)
        batches = [packed_batch(rows, seq, SHAPES[shape]["vocab_size"], generator) for _ in range(2)]
        times, losses = [], []
        for i in range(args.warmup + args.steps):
            batch = {k: v.to(device, non_blocking=True) for k, v in batches[i % len(batches)].items()}
            _sync(device)
            started = time.perf_counter()
            losses.append(step(batch))
            _sync(device)
            if i >= args.warmup:
                times.append(time.perf_counter() - started)
    except torch.cuda.OutOfMemoryError as err:
        return {**case, "error": f"out of memory: {str(err)[:200]}"}
    tokens_per_s = rows * seq / statistics.median(times)
    flops_per_token = (4 if mode == "lora" else 6) * n_forward
    peak = _peak_flops(device)
    return {
        **case,
        "params_forward": n_forward,
        "median_s_per_step": statistics.median(times),
        "tokens_per_s": tokens_per_s,
        "mfu": flops_per_token * tokens_per_s / peak if peak else None,
        "loss_first_last": [losses[0], losses[-1]],
        "peak_memory_gb": torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else None,
    }


def compare(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Ours against the baseline for each (shape, seq, mode), and the targets for LoRA."""
    by_key = {(r["implementation"], r["shape"], r["seq"], r["mode"]): r for r in results}
    rows = []
    for (implementation, shape, seq, mode), mine in by_key.items():
        theirs = by_key.get(("transformers+peft", shape, seq, mode))
        if implementation != "raytune_ft" or theirs is None or "error" in mine:
            continue
        row: dict[str, Any] = {"shape": shape, "seq": seq, "mode": mode, "mfu": mine.get("mfu")}
        if "error" in theirs:
            row["baseline"] = theirs["error"]
        else:
            row["speedup"] = mine["tokens_per_s"] / theirs["tokens_per_s"]
            if mine["peak_memory_gb"] and theirs["peak_memory_gb"]:
                row["memory_ratio"] = mine["peak_memory_gb"] / theirs["peak_memory_gb"]
        if mode == "lora":
            row["targets_met"] = {
                "mfu": row["mfu"] is not None and row["mfu"] >= TARGETS["lora_mfu"],
                "speedup": row.get("speedup", 0.0) >= TARGETS["lora_speedup"],
                "memory_ratio": row.get("memory_ratio", 1.0) <= TARGETS["lora_memory_ratio"],
            }
        rows.append(row)
    return rows


def _release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((flops for card, flops in PEAK_BF16.items() if card in name), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=["qwen2-0.5b", "qwen2-1.5b"], choices=list(SHAPES))
    parser.add_argument("--seqs", nargs="+", type=int, default=[2048, 8192])
    parser.add_argument("--modes", nargs="+", default=["lora", "full"], choices=["lora", "full"])
    parser.add_argument("--implementations", nargs="+", default=list(IMPLEMENTATIONS), choices=IMPLEMENTATIONS)
    parser.add_argument("--tokens", type=int, default=8192, help="tokens per step (rows = tokens / seq, at least 1)")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="the tiny shape at 256 tokens, for a smoke test")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    if args.tiny:
        args.shapes, args.seqs, args.tokens = ["tiny"], [256], 512
    sys.path.insert(0, str(ROOT))
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: this benchmark measures GPU throughput (--device cpu --tiny smoke-tests it)")
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    results = []
    for shape in args.shapes:
        for seq in args.seqs:
            for mode in args.modes:
                for implementation in args.implementations:
                    result = run_case(implementation, mode, shape, seq, args)
                    results.append(result)
                    print(_line(card, result), flush=True)
    out = {
        "benchmark": "gpu_step",
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "device": card,
        "peak_bf16_flops": _peak_flops(device),
        "torch": torch.__version__,
        "config": {"tokens_per_step": args.tokens, "steps": args.steps, "warmup": args.warmup},
        "results": results,
        "comparison": compare(results),
        "targets": TARGETS,
        "command": "python bench/gpu_step.py " + " ".join(sys.argv[1:]),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    for row in out["comparison"]:
        print(json.dumps(row))


def _line(card: str, r: dict[str, Any]) -> str:
    head = f"{card} {r['implementation']:17s} {r['shape']} {r['seq']:5d} {r['mode']:4s}"
    if "error" in r:
        return f"{head}: {r['error']}"
    mfu = f"{100 * r['mfu']:.1f}% MFU" if r["mfu"] is not None else "MFU n/a"
    memory = f", peak {r['peak_memory_gb']:.1f} GB" if r["peak_memory_gb"] is not None else ""
    return f"{head}: {r['tokens_per_s']:,.0f} tokens/s, {r['median_s_per_step']:.3f} s/step, {mfu}{memory}"


if __name__ == "__main__":
    main()
