"""A merged export of the builtin model plus a LoRA adapter loads in vLLM and answers as transformers does:
``raytune-ft eval`` generates on it with both engines (eval.engine vllm and hf), on Ray Data actors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from raytune_ft.cli import main

pytestmark = pytest.mark.integration


def engine(folder: Path) -> str:
    return str(json.loads((folder / "eval_results.json").read_text())["results"]["generation"]["engine"])


def predictions(folder: Path) -> list[str]:
    return [json.loads(line)["predict"] for line in (folder / "generated_predictions.jsonl").read_text().splitlines()]


def test_export_generates_the_same_in_vllm_and_transformers(
    local_ray: None, builtin_dir: Path, adapter_checkpoint: Any, tmp_path: Path
) -> None:
    run = tmp_path / "runs" / "smol"
    adapter_checkpoint(builtin_dir, run, 1, seed=1)
    export = tmp_path / "export"
    assert main(["export", "--checkpoint", str(run), "--out", str(export)]) == 0
    common = ["eval", "--model", str(export), "--tasks", "generation", "data.dataset=identity",
              "eval.max_samples=6", "eval.max_new_tokens=8", "eval.batch_size=6"]  # fmt: skip
    assert main([*common, "eval.engine=vllm", "--out", str(tmp_path / "vllm")]) == 0
    assert main([*common, "eval.engine=hf", "--out", str(tmp_path / "hf")]) == 0
    assert engine(tmp_path / "vllm").startswith("vllm ") and engine(tmp_path / "hf").startswith("transformers ")
    from_vllm, from_hf = predictions(tmp_path / "vllm"), predictions(tmp_path / "hf")
    assert len(from_vllm) == len(from_hf) == 6 and all(from_vllm)
    # Greedy float32 on both engines: the same words, give or take a rare near-tie.
    assert sum(a == b for a, b in zip(from_vllm, from_hf, strict=True)) >= 5, (from_vllm, from_hf)


def test_chat_takes_an_inference_yaml_and_answers_on_vllm_as_on_transformers(
    builtin_dir: Path, adapter_checkpoint: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "runs" / "smol"
    adapter_checkpoint(builtin_dir, run, 1, seed=2)
    replies = {}
    for backend in ("vllm", "huggingface"):
        recipe = tmp_path / f"{backend}.yaml"  # LLaMA-Factory's inference YAML
        recipe.write_text(f"model_name_or_path: {builtin_dir}\nadapter_name_or_path: {run}\ninfer_backend: {backend}\n")
        capsys.readouterr()
        assert main(["chat", str(recipe), "--prompt", "What is the capital of France?", "--max-new-tokens", "16"]) == 0
        replies[backend] = capsys.readouterr().out.strip()
    # Greedy float32 on both engines, the adapter applied as a LoRA request on vLLM: the same opening words.
    assert replies["vllm"] and replies["vllm"].split()[:4] == replies["huggingface"].split()[:4], replies
    # The chat stopped its engine: no vLLM process is left behind in this (test) process.
    import psutil

    left = [p.name() for p in psutil.Process().children(recursive=True) if "VLLM" in p.name()]
    assert not left, left
