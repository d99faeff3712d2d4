"""Export fidelity and size: the builtin SmolLM2-135M plus a LoRA adapter, exported as HF safetensors,
GGUF f16 and GGUF q8_0, each read back by transformers and compared with base + adapter (peft).

Per format: export seconds, size on disk, the largest logit difference over a chat prompt, how often
the top-1 token agrees, and whether 16 greedy tokens are identical. Results: bench/results/export.json.

    .venv/bin/python bench/export_fidelity.py
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "bench" / "work" / "export_fidelity"
RESULTS = ROOT / "bench" / "results" / "export.json"
sys.path.insert(0, str(ROOT / "tests"))


def main() -> None:
    from conftest import make_adapter_checkpoint  # the tests' deterministic, visibly non-zero adapter
    from transformers import AutoModelForCausalLM

    from raytune_ft.config import ExportConfig
    from raytune_ft.export import export_checkpoint
    from raytune_ft.models import load_for_inference, resolve_model_source

    shutil.rmtree(WORK, ignore_errors=True)
    run = WORK / "runs" / "smol"
    make_adapter_checkpoint(resolve_model_source("builtin:smollm2-135m-instruct"), run, 1, seed=1)
    model, tokenizer = load_for_inference(None, run)
    messages = [{"role": "user", "content": "Who are you? Answer in one sentence."}]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    reference = _run(model, ids["input_ids"])
    formats = {
        "hf": (ExportConfig(), {}),
        "gguf-f16": (ExportConfig(format="gguf"), {"gguf_file": "model-f16.gguf"}),
        "gguf-q8_0": (ExportConfig(format="gguf", gguf_type="q8_0"), {"gguf_file": "model-q8_0.gguf"}),
    }
    report: dict[str, Any] = {"bench": "export_fidelity", "model": "builtin:smollm2-135m-instruct + LoRA r=8"}
    for name, (cfg, load) in formats.items():
        start = time.perf_counter()
        folder = export_checkpoint(run, WORK / name, cfg, log=lambda _: None)
        seconds = time.perf_counter() - start
        logits, greedy = _run(AutoModelForCausalLM.from_pretrained(folder, **load).eval(), ids["input_ids"])
        report[name] = {
            "export_seconds": round(seconds, 1),
            "size_mb": round(sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e6, 1),
            "max_abs_logit_diff": round(float((logits - reference[0]).abs().max()), 4),
            "top1_agreement": round(float((logits.argmax(-1) == reference[0].argmax(-1)).float().mean()), 3),
            "greedy_16_identical": greedy == reference[1],
        }
        print(name, report[name], flush=True)
    RESULTS.write_text(json.dumps(report, indent=1) + "\n")
    print(f"results: {RESULTS}")


def _run(model: Any, ids: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
    with torch.no_grad():
        logits = model(ids).logits[0].float()
        greedy = model.generate(ids, max_new_tokens=16, do_sample=False)[0, ids.shape[1] :].tolist()
    return logits, greedy


if __name__ == "__main__":
    main()
