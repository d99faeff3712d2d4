"""TorchTrainer with 2 workers on a local Ray: the loss is reported, checkpoints land in
storage_path/run_name, and starting the same run again resumes from its latest checkpoint."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from raytune_ft.config import load_config
from raytune_ft.data import DataError
from raytune_ft.models import checkpoint_step, is_adapter_checkpoint, latest_checkpoint
from raytune_ft.train import run_training

pytestmark = pytest.mark.integration

QUICKSTART = Path(__file__).parents[2] / "configs" / "quickstart.yaml"


def metrics(run_dir: str) -> list[dict[str, float]]:
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def test_two_workers_train_then_resume(local_ray: None, tiny_model_dir: Path, tmp_path: Path) -> None:
    overrides = [
        f"model.source={tiny_model_dir}",
        "data.dataset=identity",
        "data.cutoff_len=128",
        "scaling.num_workers=2",
        "train.per_device_batch_size=4",
        "train.learning_rate=1e-2",
        "train.lr_scheduler=constant",
        "adapter.rank=32",
        "train.logging_steps=1",
        "train.save_steps=2",
        f"train.storage_path={tmp_path}",
        "train.run_name=itest",
    ]
    first = run_training(load_config(None, [*overrides, "train.max_steps=4"]))
    assert first.checkpoint is not None
    assert checkpoint_step(Path(first.checkpoint)) == 4
    assert sorted(p.name for p in Path(first.run_dir).glob("checkpoint-*")) == [
        "checkpoint-000002",
        "checkpoint-000004",
    ]
    assert is_adapter_checkpoint(Path(first.checkpoint))
    assert [m["step"] for m in metrics(first.run_dir)] == [1, 2, 3, 4]
    assert all(m["tokens_per_s"] > 0 for m in metrics(first.run_dir))

    # Same run name, more steps: Ray Train hands every worker the step-4 checkpoint.
    second = run_training(load_config(None, [*overrides, "train.max_steps=7"]))
    steps = [m["step"] for m in metrics(second.run_dir)]
    assert steps == [1, 2, 3, 4, 5, 6, 7], "resume must continue at step 5, not start over"
    assert second.checkpoint is not None
    assert latest_checkpoint(second.run_dir) == Path(second.checkpoint)
    assert checkpoint_step(Path(second.checkpoint)) == 7
    losses = [m["loss"] for m in metrics(second.run_dir)]
    assert losses[-1] < losses[0], losses


def test_bad_row_inside_ray_data_is_one_clear_error(
    local_ray: None, tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from raytune_ft.cli import main

    data = tmp_path / "bad.jsonl"
    data.write_text('{"instruction": "hi", "output": "yo"}\n{"instruction": "hi", "output": "I am {{company}}"}\n')
    code = main(["train", str(QUICKSTART), f"model.source={tiny_model_dir}", f"data.dataset={data}",
                 f"train.storage_path={tmp_path}", "train.run_name=bad"])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("raytune-ft train: error: ")
    assert f"{data}: row 2: placeholder {{{{company}}}}" in err and "data.placeholders.company" in err


def test_registry_mixing_sharegpt_and_alpaca(local_ray: None, tiny_model_dir: Path, tmp_path: Path) -> None:
    turns = [{"from": "human", "value": "Name a colour."}, {"from": "gpt", "value": "Blue."}]
    (tmp_path / "chat.json").write_text(json.dumps([{"conversations": turns}] * 6))
    (tmp_path / "qa.jsonl").write_text(json.dumps({"q": "2+2?", "a": "4"}) + "\n")
    (tmp_path / "dataset_info.json").write_text(json.dumps({
        "chat": {"file_name": "chat.json", "formatting": "sharegpt"},
        "qa": {"file_name": "qa.jsonl", "columns": {"prompt": "q", "response": "a"}},
    }))  # fmt: skip
    cfg = load_config(None, [
        f"model.source={tiny_model_dir}", "data.dataset=chat,qa", f"data.dataset_dir={tmp_path}",
        "scaling.num_workers=1", "train.per_device_batch_size=7", "train.num_epochs=1",
        f"train.storage_path={tmp_path}", "train.run_name=mixed",
    ])  # fmt: skip
    outcome = run_training(cfg)
    assert outcome.total_steps == 1, "7 rows from two registry datasets make one batch of 7"
    assert outcome.checkpoint is not None and checkpoint_step(Path(outcome.checkpoint)) == 1


def test_base_model_with_named_template_packing_and_validation(
    local_ray: None, tiny_model_dir: Path, tmp_path: Path
) -> None:
    import shutil

    from raytune_ft.data.templates import template_jinja
    from raytune_ft.models import load_for_inference
    from raytune_ft.serve import generate_reply

    base = tmp_path / "base"
    shutil.copytree(tiny_model_dir, base)
    (base / "chat_template.jinja").unlink(missing_ok=True)
    config = json.loads((base / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (base / "tokenizer_config.json").write_text(json.dumps(config))
    overrides = [f"model.source={base}", "data.dataset=identity", "data.cutoff_len=128", "scaling.num_workers=2",
                 "train.max_steps=4",
                 "train.per_device_batch_size=2", "train.logging_steps=2", "train.eval_steps=2",
                 f"train.storage_path={tmp_path}", "train.run_name=templated"]  # fmt: skip
    with pytest.raises(DataError, match=r"has no chat template of its own: set data\.template"):
        run_training(load_config(None, overrides))

    cfg = load_config(None, [*overrides, "data.template=default", "data.packing=true", "data.val_size=0.2"])
    outcome = run_training(cfg)
    logged = metrics(outcome.run_dir)
    assert [m["step"] for m in logged if "eval_loss" in m] == [2, 4]
    assert all(m["eval_loss"] > 0 for m in logged if "eval_loss" in m)
    assert all(m["eval_perplexity"] == pytest.approx(math.exp(m["eval_loss"])) for m in logged if "eval_loss" in m)

    # The checkpoint carries the template it was trained with; chat renders with it and answers.
    model, tokenizer = load_for_inference(None, outcome.run_dir)
    assert tokenizer.chat_template == template_jinja(tokenizer, "default")
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Who are you?"}], tokenize=False,
                                           add_generation_prompt=True)  # fmt: skip
    assert prompt.endswith("Assistant:")
    assert isinstance(generate_reply(model, tokenizer, [{"role": "user", "content": "Hi"}], max_new_tokens=4), str)


def test_a_llamafactory_multimodal_dataset_trains_a_vlm(local_ray: None, builtin_dir: Path, tmp_path: Path) -> None:
    """LLaMA-Factory's mllm_demo layout (an openai-style sharegpt entry with an images column, paths under the
    dataset folder), our own pictures and rows mixed with text rows, trains a tiny Qwen2-VL with LoRA on local
    Ray: the images are processed in the Ray Data tasks, the loss falls, and the checkpoint's adapter touches the
    language model only (the vision tower stays frozen)."""
    from safetensors import safe_open

    from tests.tiny_vlms import save_tiny_vlm
    from tests.unit.test_media_rows import chat, demo_registry, png

    model = save_tiny_vlm(tmp_path / "vlm", "qwen2_vl", builtin_dir)
    colours = {"red": (220, 20, 20), "green": (20, 200, 20), "blue": (20, 20, 220)}
    for name, rgb in colours.items():
        png(tmp_path / "data" / "pics" / f"{name}.png", rgb)
    rows = [{"messages": chat("<image>Which colour is this?", f"It is {name}."), "images": [f"pics/{name}.png"]}
            for name in colours] + [{"messages": chat("Say hello.", "Hello!")}]  # fmt: skip
    folder = demo_registry(tmp_path / "data", rows * 4)
    cfg = load_config(None, [
        f"model.source={model.folder}", "data.dataset=mm", f"data.dataset_dir={folder}", "data.cutoff_len=128",
        "train.per_device_batch_size=4", "train.learning_rate=1e-2", "train.lr_scheduler=constant", "adapter.rank=16",
        "train.logging_steps=1", "train.max_steps=8", "train.save_steps=8", f"train.storage_path={tmp_path}",
        "train.run_name=vlm",
    ])  # fmt: skip
    outcome = run_training(cfg)
    losses = [m["loss"] for m in metrics(outcome.run_dir)]
    assert len(losses) == 8 and losses[-1] < losses[0], losses
    assert outcome.checkpoint is not None
    with safe_open(str(Path(outcome.checkpoint) / "adapter_model.safetensors"), framework="pt") as saved:
        names = list(saved.keys())
    assert names and all(".language_model." in name for name in names), names[:5]
