"""LLaMA-Factory tool-call rows (ShareGPT ``tools`` + function_call + observation turns) train on a local Ray
with a named template: the data workers learn calls and answers but not tool results, and the checkpoint
carries the template's chat template and stop token for chat and serve."""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path
from typing import Any

import pytest

from raytune_ft.config import DataConfig, load_config
from raytune_ft.data import IGNORE_INDEX, build_datasets
from raytune_ft.data.templates import TemplateOptions, template_jinja
from raytune_ft.models import load_tokenizer
from raytune_ft.train import run_training, training_tokenizer

pytestmark = pytest.mark.integration

CITY = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
TOOLS = [{"name": "get_weather", "description": "Weather for a city.", "parameters": CITY}]


def tool_dataset(folder: Path, n: int = 8) -> Path:
    """A LLaMA-Factory dataset_info.json entry in its tool-call layout (as glaive_toolcall_en_demo)."""
    rows = []
    for i in range(n):
        call = {"name": "get_weather", "arguments": {"city": f"City{i}"}}
        rows.append({
            "conversations": [
                {"from": "human", "value": f"Weather in City{i}?"},
                {"from": "function_call", "value": json.dumps(call)},
                {"from": "observation", "value": f"result {i}: sunny"},
                {"from": "gpt", "value": f"It is sunny in City{i}."},
            ],
            "tools": json.dumps(TOOLS),
        })  # fmt: skip
    (folder / "tools.json").write_text(json.dumps(rows))
    info = {"tools_demo": {"file_name": "tools.json", "formatting": "sharegpt",
                           "columns": {"messages": "conversations", "tools": "tools"}}}  # fmt: skip
    (folder / "dataset_info.json").write_text(json.dumps(info))
    return folder


def learned_texts(rows: list[dict[str, Any]], tokenizer: Any) -> list[str]:
    return [
        tokenizer.decode([t for t, label in zip(r["input_ids"], r["labels"], strict=True) if label != IGNORE_INDEX])
        for r in rows
    ]


def test_tool_rows_train_with_a_named_template(local_ray: None, tiny_model_dir: Path, tmp_path: Path) -> None:
    data = tool_dataset(tmp_path)
    cfg = DataConfig(dataset=["tools_demo"], dataset_dir=str(data), template="qwen3_nothink", cutoff_len=512,
                     shuffle=False)  # fmt: skip
    load = functools.partial(training_tokenizer, str(tiny_model_dir), cfg.template)
    rows = build_datasets(cfg, load, seed=0, concurrency=1).train.take_all()
    tokenizer = training_tokenizer(str(tiny_model_dir), "qwen3_nothink")
    texts = learned_texts(rows, tokenizer)
    assert len(texts) == 8
    for text in texts:
        assert text.startswith('<tool_call>\n{"name": "get_weather", "arguments": {"city": "City')
        assert text.endswith(".<|im_end|>\n") and "sunny in City" in text and "result" not in text
    prompt = tokenizer.decode(rows[0]["input_ids"])
    assert "# Tools" in prompt and "<tool_response>\nresult" in prompt

    with pytest.raises(Exception, match=r"row 1: .*set data\.template"):  # the tokenizer's own Jinja has no tool format
        build_datasets(cfg.model_copy(update={"template": None}), functools.partial(training_tokenizer,
                       str(tiny_model_dir), None), seed=0, concurrency=1).train.take_all()  # fmt: skip

    overrides = [f"model.source={tiny_model_dir}", "data.dataset=tools_demo", f"data.dataset_dir={data}",
                 "data.template=qwen3_nothink", "data.cutoff_len=512", "scaling.num_workers=1",
                 "train.per_device_batch_size=4", "train.max_steps=2", "train.logging_steps=1",
                 f"train.storage_path={tmp_path}", "train.run_name=tools"]  # fmt: skip
    outcome = run_training(load_config(None, overrides))
    losses = [json.loads(line)["loss"] for line in (Path(outcome.run_dir) / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 2 and all(math.isfinite(loss) for loss in losses)
    assert outcome.checkpoint is not None
    saved = load_tokenizer(Path(outcome.checkpoint), require_chat_template=False)
    assert saved.eos_token == "<|im_end|>"
    assert saved.chat_template == template_jinja(saved, "qwen3_nothink", TemplateOptions())


def test_bad_tool_rows_name_the_row(local_ray: None, tiny_model_dir: Path, tmp_path: Path) -> None:
    data = tool_dataset(tmp_path, n=2)
    rows = json.loads((data / "tools.json").read_text())
    rows[1]["tools"] = "[{not json"
    (data / "tools.json").write_text(json.dumps(rows))
    cfg = DataConfig(dataset=["tools_demo"], dataset_dir=str(data), template="qwen3_nothink", cutoff_len=512)
    load = functools.partial(training_tokenizer, str(tiny_model_dir), cfg.template)
    with pytest.raises(Exception, match=r"tools\.json: row 2: column 'tools' is not valid JSON"):
        build_datasets(cfg, load, seed=0, concurrency=1).train.take_all()
