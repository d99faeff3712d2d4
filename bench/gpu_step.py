"""The training step core on one GPU, without Ray: tokens/s and MFU of LoRA and full tuning.

A Qwen2-shaped model of about 0.5B parameters (Qwen2.5-0.5B's shape, random weights, built from a
config) trains in bf16 on packed rows of 2048 tokens: samples of random lengths packed per row, each
with its own position ids, so attention stays inside each sample. The step is ours
(``raytune_ft.train.StepCore`` with the SFT objective, AdamW, clipping), the same code the Ray workers
run. MFU = k x N x tokens/s / peak, with N the parameters the forward multiplies by (the tied
embedding counted once, as the LM head), k = 4 for LoRA (forward + input gradients) and 6 for full
tuning (attention's quadratic term left out, as in the 6N convention), and peak the card's dense
bf16 FLOP/s (``PEAK_BF16``, from the card's name). Target: LoRA MFU >= 40% on an H100.
Results: bench/results/gpu_step.json.

    python bench/gpu_step.py [--modes lora full] [--steps 20] [--warmup 5]
    python bench/gpu_step.py --tiny --device cpu --out /tmp/gpu_step_smoke.json   # smoke test, CPU

On the device machine the package needs pydantic and pyyaml besides torch, transformers and peft.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
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
    "tiny": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
             "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 1024},
}  # fmt: skip


def build_model(shape: str, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(**SHAPES[shape], max_position_embeddings=4096, tie_word_embeddings=True)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM._from_config(config, attn_implementation="sdpa", dtype=dtype)
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


def run_mode(mode: str, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    from raytune_ft.config import load_config
    from raytune_ft.models import apply_adapter
    from raytune_ft.train.objectives import SFTObjective
    from raytune_ft.train.precision import build_precision, cast_trainable, compute_precision
    from raytune_ft.train.step import StepCore, build_optimizer, build_scheduler
    from raytune_ft.train.strategies import DDPStrategy

    gpu = device.type == "cuda"  # on GPU: a bf16 base, bf16 autocast, float32 trainable weights (train.precision)
    dtype = torch.bfloat16 if gpu else torch.float32
    model = build_model(args.shape, device, dtype)
    n_forward = forward_params(model)
    cfg = load_config(None, [f"adapter.type={mode}", "adapter.rank=16", "adapter.target=all",
                             f"model.dtype={str(dtype).split('.')[1]}", f"scaling.use_gpu={gpu}"])  # fmt: skip
    model = apply_adapter(model, cfg.adapter)
    cast_trainable(model, compute_precision(cfg))
    strategy = DDPStrategy(device, cfg)
    model, optimizer = strategy.prepare(model, lambda m: build_optimizer(m, cfg.train))
    scheduler = build_scheduler(optimizer, cfg.train, 10**6)
    core = StepCore(model, SFTObjective(), strategy, optimizer, scheduler, 1.0, build_precision(cfg, device))
    generator = torch.Generator().manual_seed(0)
    vocab = SHAPES[args.shape]["vocab_size"]
    batches = [packed_batch(args.batch, args.seq, vocab, generator) for _ in range(4)]
    times, losses = [], []
    for step in range(args.warmup + args.steps):
        batch = {k: v.to(device, non_blocking=True) for k, v in batches[step % len(batches)].items()}
        _sync(device)
        started = time.perf_counter()
        stats = core.step([batch])
        _sync(device)
        if step >= args.warmup:
            times.append(time.perf_counter() - started)
        losses.append(stats.loss_sum / max(stats.terms, 1))
    tokens = args.batch * args.seq
    tokens_per_s = tokens / statistics.median(times)
    flops_per_token = (4 if mode == "lora" else 6) * n_forward
    peak = _peak(device)
    return {
        "mode": mode,
        "params_forward": n_forward,
        "tokens_per_step": tokens,
        "median_s_per_step": statistics.median(times),
        "tokens_per_s": tokens_per_s,
        "flops_per_token": flops_per_token,
        "mfu": flops_per_token * tokens_per_s / peak if peak else None,
        "loss_first_last": [losses[0], losses[-1]],
        "peak_memory_gb": torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else None,
    }


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((flops for card, flops in PEAK_BF16.items() if card in name), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modes", nargs="+", default=["lora", "full"], choices=["lora", "full"])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=4, help="packed rows per step")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="a tiny shape, for a smoke test")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    args.shape = "tiny" if args.tiny else "qwen2-0.5b"
    sys.path.insert(0, str(ROOT))
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: this benchmark measures GPU throughput (--device cpu --tiny smoke-tests it)")
    results = [run_mode(mode, args, device) for mode in args.modes]
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    out = {
        "benchmark": "gpu_step",
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "device": card,
        "peak_bf16_flops": _peak(device),
        "torch": torch.__version__,
        "shape": args.shape,
        "config": {"seq": args.seq, "batch": args.batch, "steps": args.steps, "warmup": args.warmup},
        "results": results,
        "target": {"lora_mfu": 0.40, "card": "H100"},
        "command": "python bench/gpu_step.py " + " ".join(sys.argv[1:]),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    for r in results:
        mfu = f"{100 * r['mfu']:.1f}% MFU" if r["mfu"] is not None else "MFU n/a"
        print(f"{card} {r['mode']:4s}: {r['tokens_per_s']:,.0f} tokens/s, {r['median_s_per_step']:.3f} s/step, {mfu}")


if __name__ == "__main__":
    main()
