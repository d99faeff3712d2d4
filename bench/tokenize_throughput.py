"""Tokenization throughput of our Ray Data pipeline vs ``datasets.map`` vs plain tokenizer calls.

All three turn the same generated alpaca set (shared/bench-data/alpaca_1k.json repeated to 50k
rows, JSON lines) into token rows with SmolLM2-135M-Instruct's tokenizer, cutoff 512, in this one
invocation, interleaved repeat by repeat so the machine's noise hits each alike; the ratios are the
figures to quote. ``datasets.map(batched=True, num_proc=2)`` runs our own per-row work
(``encode_rows`` + ``truncate``: parse, normalise, render with label masks, tokenize); the plain
baseline renders each conversation once and tokenizes it, without masks: the floor. Ray is started
once before timing; each timed pipeline run includes starting its tokenizer actors (Python
imports and the tokenizer load). Also reported: padding efficiency (non-pad / computed tokens,
batches of 4 padded to the longest row) with and without packing on a length-skewed set.
Results: bench/results/tokenize_throughput.json.

    .venv/bin/python bench/tokenize_throughput.py [--rows 50000] [--repeats 3] [--concurrency 2 1]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BENCH_DATA = ROOT.parent / "shared" / "bench-data" / "alpaca_1k.json"
WORK = ROOT / "bench" / "work"
RESULTS = ROOT / "bench" / "results" / "tokenize_throughput.json"
MODEL = "builtin:smollm2-135m-instruct"
CUTOFF = 512
BATCH = 4  # rows per training batch when measuring padding (the reference batch per device)
BATCH_ROWS = 1000  # rows per tokenizer call in the baselines (datasets.map's default batch size)
SKEW_EVERY, SKEW_TIMES = 8, 6  # skewed set: every 8th row's answer repeated 6 times
TARGET = 1.0  # ours / datasets.map, rows per second
ENV = {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


# --- data -----------------------------------------------------------------------------------------


def alpaca_rows() -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = json.loads(BENCH_DATA.read_text())
    return rows


def write_jsonl(path: Path, rows: Iterator[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    return path


def make_alpaca(n: int) -> Path:
    """alpaca_1k repeated to ``n`` rows, in file order."""
    base = alpaca_rows()
    return write_jsonl(WORK / f"alpaca_{n}.jsonl", (base[i % len(base)] for i in range(n)))


def make_skewed() -> Path:
    """alpaca_1k with every ``SKEW_EVERY``-th answer repeated ``SKEW_TIMES`` times: mostly short, some long rows."""

    def skew(i: int, row: dict[str, Any]) -> dict[str, Any]:
        long = i % SKEW_EVERY == 0
        return {**row, "output": " ".join([row["output"]] * SKEW_TIMES)} if long else row

    return write_jsonl(WORK / "alpaca_skewed_1k.jsonl", (skew(i, row) for i, row in enumerate(alpaca_rows())))


def numbered_lines(path: Path) -> list[tuple[str, int, str]]:
    """``(path, row, json_text)`` records as ``encode_rows`` takes them."""
    with path.open() as f:
        return [(str(path), number, line) for number, line in enumerate(f, start=1) if line.strip()]


# --- the three methods ----------------------------------------------------------------------------


def timed(fn: Callable[[], tuple[int, int]]) -> dict[str, float]:
    started = time.perf_counter()
    rows, tokens = fn()
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "rows": rows, "tokens": tokens, "rows_per_s": rows / seconds, "tokens_per_s": tokens / seconds}


def data_config(path: Path, packing: bool = False) -> Any:
    from raytune_ft.config import DataConfig

    return DataConfig(dataset=[str(path)], cutoff_len=CUTOFF, shuffle=False, packing=packing, placeholders={})


def ours_lengths(path: Path, concurrency: int, packing: bool = False) -> Iterator[int]:
    """Lengths of the rows our pipeline yields, consumed on the driver as a trainer would."""
    from raytune_ft.data import build_train_dataset
    from raytune_ft.models import load_tokenizer, resolve_model_source

    load = functools.partial(load_tokenizer, resolve_model_source(MODEL))
    ds = build_train_dataset(data_config(path, packing), load, seed=0, concurrency=concurrency)
    for batch in ds.iter_batches(batch_size=256, batch_format="numpy"):
        yield from (len(ids) for ids in batch["input_ids"])


def run_ours(path: Path, concurrency: int) -> tuple[int, int]:
    lengths = list(ours_lengths(path, concurrency))
    return len(lengths), sum(lengths)


def encode_batch_fn(tokenizer: Any, source: str, batch: dict[str, list[Any]], indices: list[int]) -> dict[str, Any]:
    """``datasets.map`` body: exactly the per-row work of our tokenizer actors."""
    from raytune_ft.data import EncodeOptions, encode_rows, truncate

    rows = [(source, i + 1, text) for i, text in zip(indices, batch["text"], strict=True)]
    kept = [
        truncate(r.input_ids or [], r.labels or [], CUTOFF)
        for r in encode_rows(tokenizer, EncodeOptions(cutoff_len=CUTOFF), [], rows)
    ]
    samples = [k for k in kept if k is not None]
    return {"input_ids": [ids for ids, _ in samples], "labels": [labels for _, labels in samples]}


def run_datasets_map(path: Path, tokenizer: Any) -> tuple[int, int]:
    """``load_dataset('text')`` (file -> Arrow cache in a fresh temp dir) then ``map(num_proc=2)``."""
    import datasets
    import pyarrow.compute as pc

    with tempfile.TemporaryDirectory(dir=WORK) as cache:
        raw = datasets.load_dataset("text", data_files=str(path), cache_dir=cache, split="train")
        out = raw.map(
            functools.partial(encode_batch_fn, tokenizer, str(path)),
            batched=True,
            batch_size=BATCH_ROWS,
            with_indices=True,
            num_proc=2,
            remove_columns=["text"],
        )
        lengths = pc.list_value_length(out.data.column("input_ids"))
        return len(out), int(pc.sum(lengths).as_py())


def run_plain(path: Path, tokenizer: Any) -> tuple[int, int]:
    """One process: parse, normalise, render once (no masks), tokenize ``BATCH_ROWS`` texts per call."""
    from raytune_ft.data import normalize_row

    with path.open() as f:
        lines = [line for line in f if line.strip()]
    rows = tokens = 0
    for start in range(0, len(lines), BATCH_ROWS):
        messages = [normalize_row(json.loads(line), {}, "plain") for line in lines[start : start + BATCH_ROWS]]
        texts = [tokenizer.apply_chat_template(m, tokenize=False) for m in messages]
        ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
        rows += len(ids)
        tokens += sum(min(len(x), CUTOFF) for x in ids)
    return rows, tokens


def summarize(runs: list[dict[str, float]]) -> dict[str, Any]:
    return {
        "rows": runs[0]["rows"],
        "tokens": runs[0]["tokens"],
        "median_seconds": statistics.median(r["seconds"] for r in runs),
        "median_rows_per_s": statistics.median(r["rows_per_s"] for r in runs),
        "median_tokens_per_s": statistics.median(r["tokens_per_s"] for r in runs),
        "repeats": runs,
    }


def throughput(path: Path, repeats: int, concurrencies: list[int], tokenizer: Any) -> dict[str, dict[str, Any]]:
    methods: dict[str, Callable[[], tuple[int, int]]] = {
        **{f"ours_ray_c{c}": functools.partial(run_ours, path, c) for c in concurrencies},
        "datasets_map_np2": functools.partial(run_datasets_map, path, tokenizer),
        "plain_tokenizer": functools.partial(run_plain, path, tokenizer),
    }
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in methods}
    for repeat in range(1, repeats + 1):
        for name, fn in methods.items():  # interleaved, so drift in machine load is shared
            runs[name].append(timed(fn))
            r = runs[name][-1]
            print(f"repeat {repeat} {name:18s} {r['seconds']:7.2f}s {r['rows_per_s']:9.0f} rows/s", flush=True)
    return {name: summarize(r) for name, r in runs.items()}


# --- padding --------------------------------------------------------------------------------------


def padding(path: Path, tokenizer: Any) -> dict[str, Any]:
    """Non-pad / computed tokens for batches of ``BATCH`` padded to their longest row, on the skewed set."""
    from raytune_ft.data import EncodeOptions, encode_rows, pack_samples, padding_efficiency, truncate

    encoded = encode_rows(tokenizer, EncodeOptions(cutoff_len=CUTOFF), [], numbered_lines(path))
    kept = (truncate(r.input_ids or [], r.labels or [], CUTOFF) for r in encoded)
    samples = [k for k in kept if k is not None]
    lengths = [len(ids) for ids, _ in samples]
    packed = [len(ids) for ids, _, _ in pack_samples(samples, CUTOFF)]
    # the pipeline packs each 256-row actor batch on its own
    per_batch = [len(ids) for i in range(0, len(samples), 256) for ids, _, _ in pack_samples(samples[i : i + 256], CUTOFF)]
    started = time.perf_counter()
    pipeline_packed = list(ours_lengths(path, concurrency=2, packing=True))
    pipeline_seconds = time.perf_counter() - started
    pipeline_unpacked = list(ours_lengths(path, concurrency=2))
    return {
        "set": f"alpaca_1k (JSON lines) with every {SKEW_EVERY}th answer repeated {SKEW_TIMES}x (space-joined)",
        "samples": len(samples),
        "sample_tokens": {"median": statistics.median(lengths), "max": max(lengths), "total": sum(lengths)},
        "samples_at_cutoff": sum(n == CUTOFF for n in lengths),
        "batch_size": BATCH,
        "unpacked_file_order": padding_efficiency(lengths, BATCH),
        "packed_whole_set": padding_efficiency(packed, BATCH),
        "packed_per_256_rows": padding_efficiency(per_batch, BATCH),
        "pipeline_unpacked": padding_efficiency(pipeline_unpacked, BATCH),
        "pipeline_packed": padding_efficiency(pipeline_packed, BATCH),
        "pipeline_packed_rows": len(pipeline_packed),
        "pipeline_packed_tokens": sum(pipeline_packed),
        "pipeline_packed_seconds": pipeline_seconds,
    }


# --- report ---------------------------------------------------------------------------------------


def versions() -> dict[str, str]:
    import datasets
    import ray
    import tokenizers
    import torch
    import transformers

    mods = {"torch": torch, "ray": ray, "transformers": transformers, "datasets": datasets, "tokenizers": tokenizers}
    return {"python": platform.python_version(), **{k: m.__version__ for k, m in mods.items()}}


def ratio(a: dict[str, Any], b: dict[str, Any]) -> dict[str, float]:
    return {k: a[f"median_{k}"] / b[f"median_{k}"] for k in ("rows_per_s", "tokens_per_s")}


def print_table(methods: dict[str, dict[str, Any]], pad: dict[str, Any]) -> None:
    print(f"\n{'method':18s} {'rows':>7s} {'tokens':>9s} {'median s':>9s} {'rows/s':>9s} {'tokens/s':>10s}")
    for name, m in methods.items():
        print(
            f"{name:18s} {m['rows']:7d} {m['tokens']:9d} {m['median_seconds']:9.2f} "
            f"{m['median_rows_per_s']:9.0f} {m['median_tokens_per_s']:10.0f}"
        )
    print("\npadding efficiency (skewed set, batches of 4):")
    for key in ("unpacked_file_order", "packed_whole_set", "packed_per_256_rows", "pipeline_unpacked", "pipeline_packed"):
        print(f"  {key:22s} {pad[key]:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[2, 1], help="tokenizer actor counts to run")
    args = parser.parse_args()
    os.environ.update(ENV)
    sys.path.insert(0, str(ROOT))

    import datasets
    import ray
    import ray.data

    from raytune_ft.models import load_tokenizer, resolve_model_source

    datasets.disable_progress_bars()
    path, skewed = make_alpaca(args.rows), make_skewed()
    started = time.perf_counter()
    tokenizer = load_tokenizer(resolve_model_source(MODEL))
    tokenizer_load_s = time.perf_counter() - started
    load_avg = os.getloadavg()[0]
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        runtime_env={"env_vars": {**ENV, "PYTHONPATH": str(ROOT)}},
    )
    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        run_ours(skewed, max(args.concurrency))  # warm-up: Ray Data's first execution, file cache
        methods = throughput(path, args.repeats, args.concurrency, tokenizer)
        pad = padding(skewed, tokenizer)
    finally:
        ray.shutdown()
    ours_name = max((m for m in methods if m.startswith("ours")), key=lambda m: methods[m]["median_rows_per_s"])
    vs_map = ratio(methods[ours_name], methods["datasets_map_np2"])
    result = {
        "benchmark": "tokenize_throughput",
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "load_avg_1m_start": load_avg,
            "load_avg_1m_end": os.getloadavg()[0],
            **versions(),
        },
        "config": {
            "model": MODEL,
            "dataset": f"alpaca_1k repeated to {args.rows} rows (JSON lines)",
            "rows": args.rows,
            "cutoff_len": CUTOFF,
            "repeats": args.repeats,
            "tokenizer_actor_concurrency": args.concurrency,
            "baseline_batch_rows": BATCH_ROWS,
        },
        "methods": methods,
        "ours": ours_name,
        "ratio_ours_vs_datasets_map": vs_map,
        "ratio_ours_vs_plain": ratio(methods[ours_name], methods["plain_tokenizer"]),
        "target": {"ours_vs_datasets_map_rows_per_s": TARGET, "met": vs_map["rows_per_s"] >= TARGET},
        "padding_efficiency": pad,
        "notes": {
            "ours": "build_train_dataset (shuffle off) consumed with iter_batches(256, numpy) on the driver; "
            "ray.init excluded (done once before timing), actor start-up and per-actor tokenizer load included",
            "datasets_map_np2": "load_dataset('text') of the JSONL into a fresh temp cache dir, then "
            "map(encode_rows + truncate, batched, batch_size 1000, num_proc=2); tokens counted from the Arrow "
            "column; the tokenizer is loaded once before timing and pickled to the map workers",
            "plain_tokenizer": "one process: json.loads + normalize_row + apply_chat_template(tokenize=False) "
            "+ tokenizer(1000 texts); no label masks; tokens capped at cutoff_len",
            "tokenizer_load_s_driver": tokenizer_load_s,
        },
        "command": "python bench/tokenize_throughput.py " + " ".join(sys.argv[1:]),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print_table(methods, pad)
    print(f"\nours = {ours_name}; vs datasets.map {vs_map['rows_per_s']:.2f}x rows/s (target {TARGET}x)")
    print(f"vs plain {result['ratio_ours_vs_plain']['rows_per_s']:.2f}x rows/s")


if __name__ == "__main__":
    main()
