"""The step core without Ray: loss falls, the right weights change, accumulation is exact, and a
checkpoint restores model, optimizer and progress."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from raytune_ft.config import JobConfig, load_config
from raytune_ft.data import BUILTIN_DATASETS, encode_batch, normalize_row, pad_batch, render_segments
from raytune_ft.train import TrainState, build_training, restore_state, save_checkpoint

CPU = torch.device("cpu")


def job(model_dir: Path, *overrides: str) -> JobConfig:
    return load_config(None, [f"model.source={model_dir}", "train.learning_rate=5e-3", "train.seed=0", *overrides])


def identity_batch(tokenizer: Any, n: int, offset: int = 0) -> dict[str, torch.Tensor]:
    rows = read_rows(BUILTIN_DATASETS["identity"])[offset : offset + n]
    names = {"name": "Raytune", "author": "the raytune_ft team"}
    convs = [render_segments(tokenizer, normalize_row(r, names, "identity"), False) for r in rows]
    encoded = [e for e in encode_batch(tokenizer, convs, 256) if e is not None]
    return pad_batch([e[0] for e in encoded], [e[1] for e in encoded], tokenizer.pad_token_id)


def read_rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize(
    "overrides", [["adapter.type=lora", "adapter.rank=32", "adapter.alpha=32"], ["adapter.type=full"]]
)
def test_loss_falls(tiny_model_dir: Path, tokenizer: Any, overrides: list[str]) -> None:
    cfg = job(tiny_model_dir, *overrides, "train.learning_rate=1e-2", "train.lr_scheduler=constant")
    core, _ = build_training(cfg, 40, CPU)
    batch = identity_batch(tokenizer, 4)
    losses = [(s.loss_sum / s.terms) for s in (core.step([batch]) for _ in range(20))]
    # A random 2-layer model starts near ln(vocab) = 10.8 nats; a full nat down is real learning.
    assert losses[-1] < losses[0] - 1.0, losses


def test_lora_trains_adapters_and_freezes_the_base(tiny_model_dir: Path, tokenizer: Any) -> None:
    core, _ = build_training(job(tiny_model_dir), 10, CPU)
    before = snapshot(core.model)
    for _ in range(3):
        core.step([identity_batch(tokenizer, 4)])
    after = snapshot(core.model)
    lora = [n for n in before if "lora_" in n]
    base = [n for n in before if "lora_" not in n]
    assert lora and base
    assert all(not torch.equal(before[n], after[n]) for n in lora), "every LoRA matrix should move"
    assert all(torch.equal(before[n], after[n]) for n in base), "base weights must stay frozen"
    trainable = {n for n, p in core.model.named_parameters() if p.requires_grad}
    assert trainable == set(lora)


def test_lora_all_targets_every_linear_layer(tiny_model_dir: Path) -> None:
    core, _ = build_training(job(tiny_model_dir), 10, CPU)
    targets = {n.split(".")[-4] for n, _ in core.model.named_parameters() if n.endswith("lora_A.default.weight")}
    assert targets == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def test_full_tuning_changes_every_weight_that_gets_gradient(tiny_model_dir: Path, tokenizer: Any) -> None:
    core, _ = build_training(job(tiny_model_dir, "adapter.type=full"), 10, CPU)
    before = snapshot(core.model)
    core.step([identity_batch(tokenizer, 4)])
    after = snapshot(core.model)
    changed = [n for n in before if not torch.equal(before[n], after[n])]
    assert len(changed) == len(before)


def test_gradient_accumulation_matches_one_big_batch(tiny_model_dir: Path, tokenizer: Any) -> None:
    cfg = job(tiny_model_dir, "adapter.type=full", "train.max_grad_norm=null")
    one, _ = build_training(cfg, 10, CPU)
    two, _ = build_training(cfg, 10, CPU)
    # SGD moves each weight by lr x its gradient, so equal weights mean equal gradients. AdamW's first step
    # moves every weight by about lr x the gradient's sign, which turns float noise in a near-zero gradient
    # (kernels sum in different orders on different CPUs) into a full lr-sized difference.
    for core in (one, two):
        core.optimizer = torch.optim.SGD([p for p in core.model.parameters() if p.requires_grad], lr=0.5)
    whole = one.step([identity_batch(tokenizer, 4)])
    parts = two.step([identity_batch(tokenizer, 2), identity_batch(tokenizer, 2, offset=2)])
    assert whole.terms == parts.terms
    assert whole.loss_sum == pytest.approx(parts.loss_sum, rel=1e-5)
    for (name, a), (_, b) in zip(one.model.named_parameters(), two.model.named_parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("adapter", ["lora", "full"])
def test_checkpoint_restores_weights_optimizer_and_progress(
    tiny_model_dir: Path, tokenizer: Any, tmp_path: Path, adapter: str
) -> None:
    cfg = job(tiny_model_dir, f"adapter.type={adapter}")
    core, tok = build_training(cfg, 10, CPU)
    for _ in range(3):
        core.step([identity_batch(tokenizer, 4)])
    save_checkpoint(tmp_path, core, tok, cfg, TrainState(global_step=3, epoch=1, batches_in_epoch=2))

    resumed, _ = build_training(cfg, 10, CPU, checkpoint=tmp_path)
    state = restore_state(tmp_path, resumed, cfg.train)
    assert state == TrainState(global_step=3, epoch=1, batches_in_epoch=2)
    assert resumed.scheduler.last_epoch == core.scheduler.last_epoch == 3
    for (name, a), (_, b) in zip(core.model.named_parameters(), resumed.model.named_parameters(), strict=True):
        torch.testing.assert_close(a, b, msg=name)
    # The next step from the resumed core equals the next step of the original.
    batch = identity_batch(tokenizer, 4, offset=8)
    torch.manual_seed(1)
    a = core.step([batch])
    torch.manual_seed(1)
    b = resumed.step([batch])
    assert a.loss_sum == pytest.approx(b.loss_sum, rel=1e-6)
    assert a.lr == b.lr
    # Identical updates need the restored AdamW moments, not fresh ones.
    for (name, x), (_, y) in zip(core.model.named_parameters(), resumed.model.named_parameters(), strict=True):
        torch.testing.assert_close(x, y, msg=name)
    assert (tmp_path / "raytune_ft.yaml").is_file() and (tmp_path / "tokenizer.json").is_file()


def test_resume_with_a_new_learning_rate_follows_the_new_schedule(
    tiny_model_dir: Path, tokenizer: Any, tmp_path: Path
) -> None:
    """A run resumed under another train.learning_rate (as a PBT trial continued from another trial's
    checkpoint is) continues the cosine schedule from the saved step at the new peak, not the saved one."""
    cfg = job(tiny_model_dir, "train.learning_rate=1e-3", "train.weight_decay=0.0")
    core, tok = build_training(cfg, 10, CPU)
    for _ in range(3):
        core.step([identity_batch(tokenizer, 4)])
    save_checkpoint(tmp_path, core, tok, cfg, TrainState(global_step=3))

    faster = job(tiny_model_dir, "train.learning_rate=4e-3", "train.weight_decay=0.01")
    resumed, _ = build_training(faster, 10, CPU, checkpoint=tmp_path)
    restore_state(tmp_path, resumed, faster.train)
    a, b = core.step([identity_batch(tokenizer, 4)]), resumed.step([identity_batch(tokenizer, 4)])
    assert b.lr == pytest.approx(4 * a.lr, rel=1e-6)
    assert a.lr < 1e-3, "the schedule continued from step 3, it did not restart at the peak"
    assert [g["weight_decay"] for g in resumed.optimizer.param_groups] == [0.01]
