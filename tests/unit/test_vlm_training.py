"""Vision-language models train like text models, on the parts LLaMA-Factory trains by default: the language model
learns (loss falls), the vision tower and projector stay as they were, LoRA's ``target: all`` stays in the
language model, and freeze tuning picks the language model's layers, not the tower's."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from raytune_ft.models.vision import part_of
from raytune_ft.train import build_training
from tests.tiny_vlms import save_tiny_vlm
from tests.unit.test_step import identity_batch, job, snapshot

CPU = torch.device("cpu")


@pytest.fixture(scope="module", params=["qwen2_vl", "llava", "gemma3"])
def vlm_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, builtin_dir: Path) -> Path:
    return save_tiny_vlm(tmp_path_factory.mktemp(request.param), request.param, builtin_dir).folder


def parts(names: Any) -> set[str | None]:
    return {part_of(name.removeprefix("base_model.model.")) for name in names}


def test_lora_learns_in_the_language_model_only(vlm_dir: Path) -> None:
    cfg = job(vlm_dir, "adapter.rank=32", "adapter.alpha=32", "train.learning_rate=3e-3", "train.lr_scheduler=constant")
    core, tokenizer = build_training(cfg, 40, CPU)
    trainable = [n for n, p in core.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable) and parts(trainable) == {"language_model"}
    batch = identity_batch(tokenizer, 4)
    losses = [s.loss_sum / s.terms for s in (core.step([batch]) for _ in range(20))]
    assert losses[-1] < losses[0] - 0.75, losses  # 10.8 -> 9.7-9.9 nats here, falling at every third step


def test_full_tuning_leaves_the_tower_and_projector_as_they_were(vlm_dir: Path) -> None:
    core, tokenizer = build_training(job(vlm_dir, "adapter.type=full"), 10, CPU)
    before = snapshot(core.model)
    core.step([identity_batch(tokenizer, 4)])
    after = snapshot(core.model)
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed and parts(changed) == {"language_model"}
    assert parts(before) >= {"vision_tower", "projector", "language_model"}


def test_unfrozen_parts_train_and_freeze_tuning_picks_language_layers(vlm_dir: Path) -> None:
    core, _ = build_training(job(vlm_dir, "adapter.type=full", "adapter.freeze_vision_tower=false",
                                 "adapter.freeze_language_model=true"), 10, CPU)  # fmt: skip
    trainable = [n for n, p in core.model.named_parameters() if p.requires_grad]
    assert parts(trainable) == {"vision_tower"}
    core, _ = build_training(job(vlm_dir, "adapter.type=freeze", "adapter.freeze_trainable_layers=1"), 10, CPU)
    trainable = [n for n, p in core.model.named_parameters() if p.requires_grad]
    assert trainable and parts(trainable) == {"language_model"} and all(".layers.1." in n for n in trainable)


def test_named_lora_targets_stay_out_of_the_frozen_tower(vlm_dir: Path) -> None:
    """LLaMA-Factory's classic ``q_proj,v_proj``: the vision tower has layers of those names too, and they stay
    frozen unless the tower trains."""
    core, _ = build_training(job(vlm_dir, "adapter.target=q_proj,v_proj"), 10, CPU)
    trainable = [n for n, p in core.model.named_parameters() if p.requires_grad]
    assert trainable and parts(trainable) == {"language_model"}
    assert {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in trainable} == {"q_proj", "v_proj"}
