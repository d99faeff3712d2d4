"""Does GRPO raise the builtin model's score on the bundled task? ``configs/grpo_math.yaml`` as a user runs it.

SmolLM2-135M-Instruct is trained with ``raytune-ft train configs/grpo_math.yaml`` (LoRA, vLLM rollout engine
on local Ray) once per ``rollout.placement`` asked for, with the overrides given. Before and after, the
model answers the held-out ``arithmetic_test_200`` problems greedily (vLLM, the chat template, up to 256 new
tokens) and ``exact_match`` scores them, so the figure is not the noisy per-step training reward
(32 sampled answers a step: a standard deviation of about 0.05). Reported per placement: held-out accuracy
before and after, its difference with a 95% interval (paired by problem), the training reward per step,
seconds per step and wall time. Results: bench/results/grpo_task_reward.json; an invocation with the same
job (config, steps, overrides) adds its placements to the file and reuses the base's scores.

    .venv/bin/python bench/grpo_task_reward.py [--steps 20] [--placements colocated,separate] [set ...]

Extra ``key=value`` arguments go to every training run (e.g. ``method.temperature=0.7``).
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
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "grpo_task_reward.json"
CONFIG = ROOT / "configs" / "grpo_math.yaml"
EVAL_TOKENS = 256

EVAL_SCRIPT = r"""
import json, sys
from raytune_ft.config import ModelConfig
from raytune_ft.data import BUILTIN_DATASETS
from raytune_ft.models.vllm_engine import start_vllm
from raytune_ft.rl.rewards import exact_match
from vllm import SamplingParams

from pathlib import Path
adapter, tokens = (None if sys.argv[1] == "-" else Path(sys.argv[1])), int(sys.argv[2])
rows = [json.loads(line) for line in BUILTIN_DATASETS["arithmetic_test_200"].read_text().splitlines()]
engine = start_vllm(ModelConfig(), adapter, max_model_len=512)
prompts = [
    engine.tokenizer.apply_chat_template([{"role": "user", "content": row["instruction"]}], tokenize=False,
                                         add_generation_prompt=True)
    for row in rows
]
outputs = engine.llm.generate(prompts, SamplingParams(temperature=0.0, max_tokens=tokens), lora_request=engine.lora,
                              use_tqdm=False)
answers = [out.outputs[0].text for out in outputs]
scores = exact_match(completions=answers, answer=[str(row["answer"]) for row in rows])
engine.close()
print("RESULT " + json.dumps({"scores": scores, "lengths": [len(out.outputs[0].token_ids) for out in outputs]}))
"""


def held_out(adapter: Path | None) -> dict[str, Any]:
    """Greedy exact_match of the base (or base + adapter) on arithmetic_test_200, in a process of its own."""
    command = [sys.executable, "-c", EVAL_SCRIPT, str(adapter) if adapter else "-", str(EVAL_TOKENS)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    found = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not found:
        raise SystemExit(f"evaluation failed ({done.returncode}):\n{done.stderr[-4000:]}")
    result: dict[str, Any] = json.loads(found[0][len("RESULT ") :])
    result["accuracy"] = statistics.fmean(result["scores"])
    result["mean_length"] = statistics.fmean(result["lengths"])
    return result


def paired_difference(before: list[float], after: list[float]) -> dict[str, float]:
    """Mean of after - before over the same problems, with a normal 95% interval."""
    diffs = [b - a for a, b in zip(before, after, strict=True)]
    mean = statistics.fmean(diffs)
    half = 1.96 * statistics.stdev(diffs) / len(diffs) ** 0.5 if len(diffs) > 1 else 0.0
    return {"mean": mean, "low": mean - half, "high": mean + half}


def train(placement: str, steps: int, storage: Path, extra: list[str]) -> dict[str, Any]:
    name = f"task-{placement}"
    overrides = [
        f"train.max_steps={steps}", f"train.save_steps={steps}", f"train.storage_path={storage}",
        f"train.run_name={name}", f"rollout.placement={placement}", *extra,
    ]  # fmt: skip
    if placement == "separate":
        overrides.append("rollout.cpus_per_engine=0.5")  # a whole CPU each leaves Ray Data none on 2 CPUs
    log = storage / f"{name}.log"
    start = time.time()
    with log.open("w") as sink:
        done = subprocess.run([str(ROOT / ".venv" / "bin" / "raytune-ft"), "train", str(CONFIG), *overrides],
                              stdout=sink, stderr=subprocess.STDOUT, cwd=ROOT)  # fmt: skip
    if done.returncode:
        raise SystemExit(f"raytune-ft train failed ({done.returncode}):\n{log.read_text()[-4000:]}")
    logged = [json.loads(line) for line in (storage / name / "metrics.jsonl").read_text().splitlines()]
    rewards = [m["reward"] for m in logged]
    return {
        "overrides": overrides,
        "wall_s": time.time() - start,
        "median_step_s": statistics.median(m["s_per_step"] for m in logged[1:]) if len(logged) > 1 else None,
        "reward": rewards,
        "reward_first4": statistics.fmean(rewards[:4]),
        "reward_last4": statistics.fmean(rewards[-4:]),
        "response_length": [m["response_length"] for m in logged],
        "checkpoint": str(max((storage / name).glob("checkpoint-*"))),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--placements", default="colocated,separate")
    parser.add_argument("overrides", nargs="*", help="key=value for every training run")
    args = parser.parse_args()
    storage = Path(tempfile.mkdtemp(prefix="grpo-task-"))  # kept: the runs and their logs stay for a look
    report: dict[str, Any] = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "config": str(CONFIG.relative_to(ROOT)), "steps": args.steps, "overrides": args.overrides,
        "eval": f"arithmetic_test_200, greedy, {EVAL_TOKENS} new tokens, exact_match", "runs": {},
    }  # fmt: skip
    earlier = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    same_job = all(earlier.get(key) == report[key] for key in ("config", "steps", "overrides", "eval"))
    if same_job:  # another placement of the same job: the file keeps the ones measured before
        report["runs"] = earlier["runs"]
    if same_job and "base_scores" in earlier:  # greedy answers of the same base do not change
        base = {"scores": earlier["base_scores"], "accuracy": earlier["base_held_out"],
                "mean_length": earlier["base_mean_length"]}  # fmt: skip
    else:
        base = held_out(None)
    report.update(base_held_out=base["accuracy"], base_mean_length=base["mean_length"], base_scores=base["scores"])
    print(f"base: held-out exact_match {base['accuracy']:.3f} (mean {base['mean_length']:.0f} tokens)", flush=True)
    for placement in args.placements.split(","):
        run = train(placement, args.steps, storage, args.overrides)
        after = held_out(Path(run["checkpoint"]))
        run.update(
            held_out_after=after["accuracy"], after_mean_length=after["mean_length"],
            difference=paired_difference(base["scores"], after["scores"]),
        )  # fmt: skip
        report["runs"][placement] = run
        RESULTS.write_text(json.dumps(report, indent=2) + "\n")  # each placement's figures as soon as they exist
        print(
            f"{placement}: {args.steps} steps in {run['wall_s']:.0f} s; training reward first 4 "
            f"{run['reward_first4']:.3f}, last 4 {run['reward_last4']:.3f}; held-out {base['accuracy']:.3f} -> "
            f"{after['accuracy']:.3f} (difference {run['difference']['mean']:+.3f}, 95% "
            f"{run['difference']['low']:+.3f}..{run['difference']['high']:+.3f})",
            flush=True,
        )
    print(f"wrote {RESULTS.relative_to(ROOT)}; runs in {storage}")


if __name__ == "__main__":
    main()
