"""The adapter family: freeze tuning trains exactly the chosen layers and modules, rsLoRA changes
the scaling, DoRA learns magnitudes; and each is reachable from a LLaMA-Factory YAML."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch

from raytune_ft.config import ConfigError, JobConfig, load_config
from raytune_ft.train import build_training

CPU = torch.device("cpu")


def job(model_dir: Path, *overrides: str) -> JobConfig:
    return load_config(None, [f"model.source={model_dir}", "train.learning_rate=1e-2", "train.seed=0", *overrides])


def moved(cfg: JobConfig, make_batch: Any) -> set[str]:
    core, _ = build_training(cfg, 10, CPU)
    before = {n: p.detach().clone() for n, p in core.model.named_parameters()}
    for _ in range(2):
        core.step([make_batch()])
    return {n for n, p in core.model.named_parameters() if not torch.equal(before[n], p)}


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["adapter.freeze_trainable_layers=1"], lambda n: n.startswith("model.layers.1.")),
        (["adapter.freeze_trainable_layers=-1"], lambda n: n.startswith("model.layers.0.")),
        (["adapter.freeze_trainable_layers=1", "adapter.freeze_trainable_modules=mlp"],
         lambda n: n.startswith("model.layers.1.mlp.")),
        (["adapter.freeze_trainable_layers=1", "adapter.freeze_trainable_modules=mlp",
          "adapter.freeze_extra_modules=norm"],
         lambda n: n.startswith("model.layers.1.mlp.") or n == "model.norm.weight"),
    ],
)  # fmt: skip
def test_freeze_tuning_trains_exactly_the_chosen_weights(
    tiny_model_dir: Path, identity_batch: Any, overrides: list[str], expected: Any
) -> None:
    cfg = job(tiny_model_dir, "adapter.type=freeze", *overrides)
    core, _ = build_training(cfg, 10, CPU)
    names = [n for n, _ in core.model.named_parameters()]
    assert {n for n, p in core.model.named_parameters() if p.requires_grad} == {n for n in names if expected(n)}
    assert moved(cfg, identity_batch) == {n for n in names if expected(n)}


def test_freeze_errors_name_the_setting(tiny_model_dir: Path) -> None:
    with pytest.raises(ConfigError, match=r"freeze_trainable_layers 5: choose 1\.\.2 .* has 2 decoder layers"):
        build_training(job(tiny_model_dir, "adapter.type=freeze", "adapter.freeze_trainable_layers=5"), 10, CPU)
    with pytest.raises(ConfigError, match=r"freeze_trainable_modules \['mpl'\] names no module.*'mlp'"):
        build_training(job(tiny_model_dir, "adapter.type=freeze", "adapter.freeze_trainable_modules=mpl"), 10, CPU)


def test_rslora_scales_by_the_root_of_the_rank(tiny_model_dir: Path) -> None:
    def scaling(*overrides: str) -> float:
        core, _ = build_training(job(tiny_model_dir, "adapter.rank=16", "adapter.alpha=32", *overrides), 10, CPU)
        layer = next(m for m in core.model.modules() if isinstance(getattr(m, "scaling", None), dict))
        return float(layer.scaling["default"])

    assert scaling() == pytest.approx(32 / 16)
    assert scaling("adapter.use_rslora=true") == pytest.approx(32 / math.sqrt(16))


def test_dora_learns_magnitudes_and_keeps_the_base_frozen(tiny_model_dir: Path, identity_batch: Any) -> None:
    changed = moved(job(tiny_model_dir, "adapter.use_dora=true"), identity_batch)
    assert any("lora_magnitude_vector" in n for n in changed)
    assert all("lora_" in n for n in changed), "only adapter weights may move"


@pytest.mark.parametrize("adapter", ["lora", "full"])
def test_gradient_checkpointing_gives_the_same_step(tiny_model_dir: Path, identity_batch: Any, adapter: str) -> None:
    cores = []
    for on in (False, True):
        torch.manual_seed(0)  # the same LoRA init in both
        cfg = job(tiny_model_dir, f"adapter.type={adapter}", f"model.gradient_checkpointing={on}")
        cores.append(build_training(cfg, 10, CPU)[0])
    base = cores[1].model.get_base_model() if adapter == "lora" else cores[1].model  # type: ignore[operator]
    assert base.is_gradient_checkpointing
    plain, checkpointed = (core.step([identity_batch()]) for core in cores)
    assert checkpointed.loss_sum == pytest.approx(plain.loss_sum, rel=1e-6)
    assert checkpointed.grad_norm == pytest.approx(plain.grad_norm, rel=1e-4)
    for (name, a), (_, b) in zip(cores[0].model.named_parameters(), cores[1].model.named_parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=name)
