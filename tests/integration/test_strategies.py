"""scaling.strategy on 2 CPU Ray workers (gloo): FSDP2 and DeepSpeed ZeRO train LoRA and full models like
DDP does, export the gathered weights, and resume from their own sharded state."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from raytune_ft.config import load_config
from raytune_ft.models import checkpoint_step, is_adapter_checkpoint
from raytune_ft.train import run_training

pytestmark = pytest.mark.integration


def metrics(run_dir: str) -> list[dict[str, float]]:
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def overrides(model_dir: Path, storage: Path, run: str, *extra: str) -> list[str]:
    return [
        f"model.source={model_dir}",
        "data.dataset=identity",
        "data.cutoff_len=128",
        "data.shuffle=false",
        "scaling.num_workers=2",
        "train.per_device_batch_size=4",
        "train.learning_rate=1e-2",
        "train.lr_scheduler=constant",
        "train.logging_steps=1",
        f"train.storage_path={storage}",
        f"train.run_name={run}",
        *extra,
    ]


def test_fsdp2_lora_trains_evaluates_and_resumes_from_shards(
    local_ray: None, tiny_model_dir: Path, tmp_path: Path
) -> None:
    args = overrides(
        tiny_model_dir, tmp_path, "fsdp2-lora", "scaling.strategy=fsdp2", "adapter.rank=32", "train.save_steps=3",
        "data.val_size=0.2", "train.eval_steps=3", "train.gradient_accumulation_steps=2",
    )  # fmt: skip
    first = run_training(load_config(None, [*args, "train.max_steps=3"]))
    folder = Path(first.checkpoint or "")
    assert is_adapter_checkpoint(folder) and checkpoint_step(folder) == 3
    shards = sorted(p.name for p in (folder / "sharded").iterdir())
    assert shards == [".metadata", "__0_0.distcp", "__1_0.distcp"], "each worker writes its own shard"
    assert "eval_loss" in metrics(first.run_dir)[-1]

    second = run_training(load_config(None, [*args, "train.max_steps=6"]))
    logged = metrics(second.run_dir)
    assert [m["step"] for m in logged] == [1, 2, 3, 4, 5, 6], "resume continues at step 4"
    assert logged[-1]["loss"] < logged[0]["loss"]
    assert logged[-1]["eval_loss"] < logged[2]["eval_loss"]


def test_deepspeed_lora_trains_and_resumes_from_its_checkpoint(
    local_ray: None, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """ZeRO-3 with optimizer state and parameters offloaded to CPU memory (every stage saves and loads its
    state through the same DeepSpeed checkpoint; the other stages train in the full-tuning comparison)."""
    args = overrides(
        tiny_model_dir, tmp_path, "ds3-lora", "scaling.strategy=deepspeed", "scaling.deepspeed=3",
        "scaling.deepspeed_offload=all", "adapter.rank=32", "train.save_steps=3", "data.val_size=0.2",
        "train.eval_steps=3", "train.gradient_accumulation_steps=2",
    )  # fmt: skip
    first = run_training(load_config(None, [*args, "train.max_steps=3"]))
    folder = Path(first.checkpoint or "")
    assert is_adapter_checkpoint(folder) and checkpoint_step(folder) == 3
    written = {p.name for p in (folder / "deepspeed" / "state").iterdir()}
    assert {f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt" for rank in (0, 1)} <= written, written

    second = run_training(load_config(None, [*args, "train.max_steps=6"]))
    logged = metrics(second.run_dir)
    assert [m["step"] for m in logged] == [1, 2, 3, 4, 5, 6], "resume continues at step 4"
    assert logged[-1]["loss"] < logged[0]["loss"]
    assert logged[-1]["eval_loss"] < logged[2]["eval_loss"]


def test_sharded_full_tuning_matches_ddp_and_exports_the_whole_model(
    local_ray: None, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """Same data, seed and steps: FSDP2's and every ZeRO stage's losses and exported weights equal DDP's.

    AdamW's first steps move each weight by about lr x sign(gradient), so a gradient element near zero
    lets float-order noise between strategies flip a whole step of that weight. Which such elements
    appear depends on the rows of each micro-batch, so this comparison keeps rows in the order they come
    (``data.balance_micro_batches=false``), the batches it was checked with."""
    from transformers import AutoModelForCausalLM

    strategies = {
        "ddp": ["scaling.strategy=ddp"],
        "fsdp2": ["scaling.strategy=fsdp2"],
        "zero1-offload": ["scaling.strategy=deepspeed", "scaling.deepspeed=1", "scaling.deepspeed_offload=optimizer"],
        "zero2": ["scaling.strategy=deepspeed", "scaling.deepspeed=2"],
        "zero3": ["scaling.strategy=deepspeed", "scaling.deepspeed=3"],
    }
    runs = {}
    for name, strategy in strategies.items():
        args = overrides(
            tiny_model_dir, tmp_path, f"full-{name}", *strategy, "adapter.type=full", "train.learning_rate=1e-3",
            "train.max_steps=3", "train.save_steps=3", "data.balance_micro_batches=false",
        )  # fmt: skip
        runs[name] = run_training(load_config(None, args))
    losses = {name: [m["loss"] for m in metrics(run.run_dir)] for name, run in runs.items()}
    for name in strategies:
        assert losses[name] == pytest.approx(losses["ddp"], rel=1e-4), losses
    assert losses["ddp"][-1] < losses["ddp"][0]

    models = {name: AutoModelForCausalLM.from_pretrained(run.checkpoint) for name, run in runs.items()}
    reference = models["ddp"].state_dict()
    for name in strategies:
        for key, weight in models[name].state_dict().items():
            torch.testing.assert_close(weight, reference[key], rtol=1e-4, atol=1e-5, msg=f"{name}: {key}")
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert not torch.equal(models["ddp"].model.layers[0].mlp.up_proj.weight, base.model.layers[0].mlp.up_proj.weight)
