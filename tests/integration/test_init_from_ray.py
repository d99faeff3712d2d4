"""``adapter.init_from`` on 2 Ray workers: DDP and FSDP2 continue an adapter on a base with another merged in,
a restarted run resumes on the same base, and the checkpoint chats exactly as rebuilt by hand."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from raytune_ft.config import load_config
from raytune_ft.models import CONFIG_FILE, checkpoint_step, latest_checkpoint, load_for_inference
from raytune_ft.train import run_training

pytestmark = pytest.mark.integration

IDS = torch.tensor([[1, 42, 7, 99, 123, 5, 600, 2]])


@pytest.fixture(scope="module")
def adapters(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory, adapter_checkpoint: Any) -> list[Path]:
    """[one of our checkpoints (to merge), a plain PEFT folder (to continue)]."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("adapters")
    ours = adapter_checkpoint(tiny_model_dir, root / "first", 5, seed=1, source=str(tiny_model_dir))
    plain = root / "plain"
    torch.manual_seed(3)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir), LoraConfig(r=4, target_modules=["gate_proj", "up_proj"])
    )
    model.save_pretrained(plain)
    return [ours, plain]


def by_hand(base_dir: Path, merged: Path, adapter: Path) -> Any:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), merged).merge_and_unload()
    return PeftModel.from_pretrained(model, adapter).eval()


@pytest.mark.parametrize("strategy", ["ddp", "fsdp2"])
def test_training_continues_an_adapter_and_the_checkpoint_loads_again(
    local_ray: None, tiny_model_dir: Path, adapters: list[Path], tmp_path: Path, strategy: str
) -> None:
    args = [
        f"model.source={tiny_model_dir}", f"adapter.init_from={adapters[0]},{adapters[1]}", "data.dataset=identity",
        "data.cutoff_len=128", "scaling.num_workers=2", f"scaling.strategy={strategy}", "train.per_device_batch_size=2",
        "train.learning_rate=1e-2", "train.logging_steps=1", f"train.storage_path={tmp_path}", "train.run_name=cont",
    ]  # fmt: skip
    steps = [2, 3] if strategy == "ddp" else [2]  # DDP also resumes: the same base is rebuilt under the saved adapter
    for max_steps in steps:
        outcome = run_training(load_config(None, [*args, f"train.max_steps={max_steps}", f"train.save_steps={2}"]))
    checkpoint = latest_checkpoint(outcome.run_dir)
    assert checkpoint_step(checkpoint) == steps[-1]
    saved = load_config(checkpoint / CONFIG_FILE).adapter
    assert saved.init_from == [str(adapters[0]), str(adapters[1])] and saved.rank == 4
    logged = [json.loads(line)["step"] for line in (Path(outcome.run_dir) / "metrics.jsonl").read_text().splitlines()]
    assert logged == list(range(1, steps[-1] + 1))
    model, _ = load_for_inference(None, checkpoint)
    with torch.no_grad():
        assert torch.equal(
            model(input_ids=IDS).logits, by_hand(tiny_model_dir, adapters[0], checkpoint)(input_ids=IDS).logits
        )
