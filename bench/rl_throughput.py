"""Online RL throughput: GRPO on raytune_ft (Ray Train worker + vLLM rollout engine) against TRL's GRPOTrainer.

Both run the same job in this invocation, one after the other, on this machine: SmolLM2-135M-Instruct, LoRA
r16 (alpha 32) on all linear layers, the bundled arithmetic_1k prompts, 4 prompts x 8 answers per optimizer
step, at most 128 new tokens at temperature 1, lr 2e-4 constant, rewards exact_match + 0.5 x answer_format
(the same functions for both). TRL runs in its fastest mode that works here: HF ``generate`` inside the
trainer (``use_vllm=False``; its vLLM modes need CUDA), one process. Ours runs twice: ``rollout.async: off``
and ``one_step`` (generation of step k+1 overlapped with training on step k).

Reported per run: median seconds per optimizer step after the first (warm-up) step, prompts/s from it,
wall time of the whole run (start-up included), the reward curve, and the wall time at which the mean
reward over 4 consecutive steps first reaches ``--target`` (None if never). Results:
bench/results/rl_throughput.json (``--overlap-only``: ours twice, no TRL, into rl_overlap.json).

    .venv/bin/python bench/rl_throughput.py [--steps 12] [--target 0.35] [--overlap-only]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "rl_throughput.json"
OVERLAP_RESULTS = ROOT / "bench" / "results" / "rl_overlap.json"
PROMPTS, GROUP, MAX_NEW, LR, RANK = 4, 8, 128, 2e-4, 16
WEIGHTS = {"exact_match": 1.0, "answer_format": 0.5}


def ours(steps: int, storage: str, overlap: str) -> dict[str, Any]:
    overrides = [
        f"train.max_steps={steps}", f"train.storage_path={storage}", f"train.run_name=bench-{overlap}",
        f"train.save_steps={steps}", f"rollout.prompts_per_step={PROMPTS}", f"method.group_size={GROUP}",
        f"method.max_new_tokens={MAX_NEW}", f"train.learning_rate={LR}", f"adapter.rank={RANK}",
        f"method.reward={','.join(WEIGHTS)}", f"method.reward_weights=[{','.join(map(str, WEIGHTS.values()))}]",
        f"rollout.async={overlap}", "train.lr_scheduler=constant", "method.loss=grpo", "method.temperature=1.0",
    ]  # fmt: skip
    start = time.time()
    command = [
        str(ROOT / ".venv" / "bin" / "raytune-ft"),
        "train",
        str(ROOT / "configs" / "grpo_math.yaml"),
        *overrides,
    ]
    log = Path(storage, f"{overlap}.log")
    with log.open("w") as sink:
        done = subprocess.run(command, stdout=sink, stderr=subprocess.STDOUT)
    if done.returncode:
        raise SystemExit(f"raytune-ft train failed ({done.returncode}):\n{log.read_text()[-4000:]}")
    wall = time.time() - start
    logged = [json.loads(line) for line in Path(storage, f"bench-{overlap}", "metrics.jsonl").read_text().splitlines()]
    return {
        "wall_s": wall,
        "step_s": [m["s_per_step"] for m in logged],
        "step_end": [m["time"] - start for m in logged],
        "reward": [m["reward"] for m in logged],
        "generate_tokens_per_s": statistics.median(m["rollout/tokens_per_s"] for m in logged),
    }


TRL_SCRIPT = r"""
import json, sys, time
start = time.time()
import torch
from datasets import Dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
from trl import GRPOConfig, GRPOTrainer
from raytune_ft.data import BUILTIN_DATASETS
from raytune_ft.models import resolve_model_source
from raytune_ft.rl.rewards import answer_format, exact_match

steps, prompts, group, max_new, lr, rank, out = sys.argv[1:]
steps, prompts, group, max_new, rank = map(int, (steps, prompts, group, max_new, rank))
lr = float(lr)
torch.set_num_threads(2)
folder = resolve_model_source("builtin:smollm2-135m-instruct")
tokenizer = AutoTokenizer.from_pretrained(folder)
rows = [json.loads(line) for line in BUILTIN_DATASETS["arithmetic_1k"].read_text().splitlines()]
def prompt(row):
    messages = [{"role": "user", "content": row["instruction"]}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
data = Dataset.from_list([{"prompt": prompt(r), "answer": r["answer"]} for r in rows])

def format_reward(completions, **kw):
    return [0.5 * s for s in answer_format(completions=completions, **kw)]

class Clock(TrainerCallback):
    def __init__(self): self.ends, self.rewards = [], []
    def on_step_end(self, args, state, control, **kw): self.ends.append(time.time() - start)
    def on_log(self, args, state, control, logs=None, **kw):
        if logs and "reward" in logs: self.rewards.append(logs["reward"])

clock = Clock()
config = GRPOConfig(
    output_dir=out, per_device_train_batch_size=8, gradient_accumulation_steps=prompts * group // 8,
    num_generations=group, max_completion_length=max_new, temperature=1.0, learning_rate=lr,
    lr_scheduler_type="constant", max_steps=steps, logging_steps=1, save_strategy="no", report_to=[],
    use_cpu=True, bf16=False, beta=0.0, loss_type="grpo", use_vllm=False, seed=0, dataloader_num_workers=0,
)
model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
trainer = GRPOTrainer(model=model, reward_funcs=[exact_match, format_reward], args=config, train_dataset=data,
                      processing_class=tokenizer, callbacks=[clock],
                      peft_config=LoraConfig(r=rank, lora_alpha=2 * rank, target_modules="all-linear"))
trainer.train()
print(json.dumps({"wall_s": time.time() - start, "step_end": clock.ends, "reward": clock.rewards}))
"""


def trl(steps: int, out: str) -> dict[str, Any]:
    command = [sys.executable, "-c", TRL_SCRIPT, str(steps), str(PROMPTS), str(GROUP), str(MAX_NEW), str(LR),
               str(RANK), out]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"TRL's run failed ({done.returncode}):\n{done.stderr[-4000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    ends = result["step_end"]
    result["step_s"] = [b - a for a, b in zip([0.0, *ends], ends, strict=False)]  # the first includes start-up
    return dict(result)


def summarise(run: dict[str, Any], target: float) -> dict[str, Any]:
    warm = run["step_s"][1:] or run["step_s"]
    median = statistics.median(warm)
    rewards, ends = run["reward"], run["step_end"]
    reached = next(
        (ends[i] for i in range(3, min(len(rewards), len(ends))) if statistics.mean(rewards[i - 3 : i + 1]) >= target),
        None,
    )
    return {**run, "median_step_s": median, "prompts_per_s": PROMPTS / median, "wall_s_to_target": reached}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--target", type=float, default=0.35, help="mean reward over 4 consecutive steps")
    parser.add_argument("--overlap-only", action="store_true",
                        help="run ours with async off and one_step only (no TRL), into rl_overlap.json")  # fmt: skip
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="rl-bench-") as tmp:
        runs = {}
        for overlap, name in (("off", "raytune_ft"), ("one_step", "raytune_ft_one_step")):
            runs[name] = summarise(ours(args.steps, tmp, overlap), args.target)
            print(f"{name}: {runs[name]['prompts_per_s']:.3f} prompts/s", flush=True)
        if not args.overlap_only:
            runs["trl"] = summarise(trl(args.steps, tmp + "/trl"), args.target)
            print(f"trl: {runs['trl']['prompts_per_s']:.3f} prompts/s", flush=True)
    ratio = runs["raytune_ft"]["prompts_per_s"] / runs["trl"]["prompts_per_s"] if "trl" in runs else None
    overlap_ratio = runs["raytune_ft_one_step"]["prompts_per_s"] / runs["raytune_ft"]["prompts_per_s"]
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {len(__import__('os').sched_getaffinity(0))} CPUs, no GPU",
        "job": {
            "model": "SmolLM2-135M-Instruct",
            "adapter": f"LoRA r{RANK}",
            "prompts_per_step": PROMPTS,
            "group_size": GROUP,
            "max_new_tokens": MAX_NEW,
            "learning_rate": LR,
            "rewards": WEIGHTS,
            "steps": args.steps,
            "target_reward": args.target,
        },
        "runs": runs,
        "prompts_per_s_ratio": ratio,
        "one_step_over_off": overlap_ratio,
    }
    out = OVERLAP_RESULTS if args.overlap_only else RESULTS
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"raytune_ft / trl prompts/s: {ratio if ratio is None else f'{ratio:.2f}x'}; "
          f"one_step / off: {overlap_ratio:.2f}x -> {out}")  # fmt: skip


if __name__ == "__main__":
    main()
