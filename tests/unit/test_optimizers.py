"""train.optimizer: every optimizer of the registry trains the tiny model (loss falls), resumes exactly from a
checkpoint, and steps under DDP (two gloo processes, no Ray); LoRA+ and Muon group the parameters as their
papers say; combinations that cannot work are refused when the config loads."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp

from raytune_ft.config import ConfigError, JobConfig, load_config
from raytune_ft.train import TrainState, build_training, restore_state, save_checkpoint
from raytune_ft.train.optimizers import OPTIMIZERS, MuonWithAdamW
from tests.unit.test_step import identity_batch

CPU = torch.device("cpu")

# optimizer -> (adapter, learning rate): GaLore and APOLLO project whole matrices, so they tune the full model.
RUNS: dict[str, tuple[str, float]] = {
    "adamw": ("lora", 1e-2),
    "adamw_fused": ("lora", 1e-2),
    "adamw_8bit": ("lora", 1e-2),
    "paged_adamw_8bit": ("lora", 1e-2),
    "adafactor": ("lora", 1e-2),
    "galore_adamw": ("full", 3e-3),
    "apollo_adamw": ("full", 3e-3),
    "muon": ("lora", 1e-2),
    "sgd": ("full", 1.0),
}
# Small projections refreshed every 2 steps, so a resumed run must restore the projection state too.
PROJECTIONS = ["train.galore.rank=4", "train.galore.update_interval=2", "train.apollo.rank=4",
               "train.apollo.update_interval=2"]  # fmt: skip


def job(model_dir: Path, optimizer: str, *overrides: str) -> JobConfig:
    adapter, lr = RUNS[optimizer]
    return load_config(
        None,
        [f"model.source={model_dir}", f"train.optimizer={optimizer}", f"adapter.type={adapter}", "adapter.rank=32",
         "adapter.alpha=32", f"train.learning_rate={lr}", "train.lr_scheduler=constant", "train.seed=0",
         *PROJECTIONS, *overrides],
    )  # fmt: skip


def test_the_registry_is_the_config_choice() -> None:
    field = JobConfig.model_fields["train"].annotation.model_fields["optimizer"]  # type: ignore[union-attr]
    assert set(field.annotation.__args__) == set(OPTIMIZERS) == set(RUNS)


@pytest.mark.parametrize("optimizer", list(RUNS))
def test_loss_falls(tiny_model_dir: Path, tokenizer: Any, optimizer: str) -> None:
    core, _ = build_training(job(tiny_model_dir, optimizer), 40, CPU)
    batch = identity_batch(tokenizer, 4)
    losses = [(s.loss_sum / s.terms) for s in (core.step([batch]) for _ in range(12))]
    # A random 2-layer model starts near ln(vocab) = 10.8 nats; half a nat down in 12 steps is learning.
    assert losses[-1] < losses[0] - 0.5, losses


def _params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize("optimizer", list(RUNS))
def test_resume_is_exact(tiny_model_dir: Path, tokenizer: Any, tmp_path: Path, optimizer: str) -> None:
    cfg = job(tiny_model_dir, optimizer)
    core, tok = build_training(cfg, 10, CPU)
    for i in range(3):
        core.step([identity_batch(tokenizer, 4, offset=4 * i)])
    save_checkpoint(tmp_path, core, tok, cfg, TrainState(global_step=3))
    resumed, _ = build_training(cfg, 10, CPU, checkpoint=tmp_path)
    restore_state(tmp_path, resumed, cfg.train)
    assert type(resumed.optimizer) is type(core.optimizer)
    for i in range(3, 5):  # step 4 refreshes the GaLore/APOLLO projections: their restored state is used
        batch = identity_batch(tokenizer, 4, offset=4 * i)
        torch.manual_seed(i)
        a = core.step([batch])
        torch.manual_seed(i)
        b = resumed.step([batch])
        assert a.loss_sum == pytest.approx(b.loss_sum, rel=1e-6) and a.lr == b.lr
    original, again = _params(core.model), _params(resumed.model)
    for name, value in original.items():
        torch.testing.assert_close(again[name], value, rtol=0, atol=0, msg=name)


def test_loraplus_gives_b_matrices_their_own_learning_rate(tiny_model_dir: Path, tmp_path: Path) -> None:
    cfg = job(tiny_model_dir, "adamw", "train.loraplus_lr_ratio=16", "train.learning_rate=1e-3")
    core, tok = build_training(cfg, 10, CPU)
    names = {id(p): n for n, p in core.model.named_parameters()}
    groups = core.optimizer.param_groups
    assert [g["lr"] for g in groups] == [1e-3, 16e-3]
    assert all("lora_A" in names[id(p)] for p in groups[0]["params"])
    assert all("lora_B" in names[id(p)] for p in groups[1]["params"])
    # Resumed at a new learning rate, both groups follow it and keep their ratio.
    save_checkpoint(tmp_path, core, tok, cfg, TrainState(global_step=0))
    faster = job(tiny_model_dir, "adamw", "train.loraplus_lr_ratio=16", "train.learning_rate=2e-3")
    resumed, _ = build_training(faster, 10, CPU, checkpoint=tmp_path)
    restore_state(tmp_path, resumed, faster.train)
    assert [g["lr"] for g in resumed.optimizer.param_groups] == [2e-3, 32e-3]


def test_muon_takes_the_hidden_matrices_and_adamw_the_rest(tiny_model_dir: Path) -> None:
    core, _ = build_training(job(tiny_model_dir, "muon", "adapter.type=full"), 10, CPU)
    optimizer = core.optimizer
    assert isinstance(optimizer, MuonWithAdamW)
    names = {id(p): n for n, p in core.model.named_parameters()}
    muon = {names[id(p)] for g in optimizer.param_groups if g["muon"] for p in g["params"]}
    adamw = {names[id(p)] for g in optimizer.param_groups if not g["muon"] for p in g["params"]}
    assert muon and all(n.endswith("proj.weight") for n in muon), muon
    assert "model.embed_tokens.weight" in adamw and all("norm" in n or "embed" in n for n in adamw), adamw
    assert muon | adamw == set(names.values())


@pytest.mark.parametrize(
    ("overrides", "message"),
    [(["train.optimizer=galore_adamw"], "needs adapter.type full or freeze"),
     (["train.optimizer=apollo_adamw", "adapter.type=full", "scaling.strategy=fsdp2"], "runs with scaling.strategy"),
     (["train.optimizer=muon", "scaling.strategy=deepspeed"], "one-dimensional partitions"),
     (["train.optimizer=sgd", "scaling.strategy=deepspeed"], "use adamw or adamw_fused there"),
     (["train.loraplus_lr_ratio=16", "adapter.type=full"], "needs adapter.type lora")],
)  # fmt: skip
def test_combinations_that_cannot_work_are_refused(tiny_model_dir: Path, overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, [f"model.source={tiny_model_dir}", *overrides])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


SHARDED = {
    "fsdp2": (["scaling.strategy=fsdp2"], ["adamw_fused", "sgd"]),
    "zero2": (["scaling.strategy=deepspeed", "scaling.deepspeed=2"], ["adamw_fused"]),
}
"""Sharded strategies and the optimizers beyond adamw they take, stepped in the same processes."""


def _worker(rank: int, port: int, model_dir: str, batches: list[dict[str, torch.Tensor]], out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE="2", LOCAL_WORLD_SIZE="2")  # fmt: skip
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2)
    runs = [(optimizer, "ddp", ["scaling.strategy=ddp"]) for optimizer in RUNS]
    runs += [(optimizer, name, args) for name, (args, optimizers) in SHARDED.items() for optimizer in optimizers]
    try:
        for optimizer, strategy, args in runs:
            core, _ = build_training(job(Path(model_dir), optimizer, *args), 10, CPU)
            before = {k: v.clone() for k, v in (core.strategy.full_state_dict(core.model) or {}).items()}
            stats = [core.step([batches[rank + 2 * i]]) for i in range(2)]  # each rank its own rows
            mine = torch.cat([p.detach().flatten() for p in core.model.parameters() if p.requires_grad])
            result = {"loss": [s.loss_sum for s in stats], "mine": mine, "before": before,
                      "after": core.strategy.full_state_dict(core.model)}  # fmt: skip
            torch.save(result, f"{out}/{optimizer}-{strategy}-{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


def test_every_optimizer_steps_under_ddp_and_the_elementwise_ones_sharded(
    tiny_model_dir: Path, tokenizer: Any, tmp_path: Path
) -> None:
    """Two gloo processes, each its own rows: DDP averages the gradients, so after two steps both replicas
    hold the same weights, whichever optimizer stepped them; FSDP2 and ZeRO-2 step the element-wise ones."""
    batches = [identity_batch(tokenizer, 2, offset=2 * i) for i in range(4)]
    mp.spawn(_worker, args=(_free_port(), str(tiny_model_dir), batches, str(tmp_path)), nprocs=2)
    for optimizer in RUNS:
        first, second = (torch.load(tmp_path / f"{optimizer}-ddp-{rank}.pt") for rank in (0, 1))
        assert all(torch.isfinite(torch.tensor(first["loss"] + second["loss"])))
        assert first["loss"] != second["loss"], "each rank trained on its own rows"
        torch.testing.assert_close(first["mine"], second["mine"], rtol=0, atol=0, msg=optimizer)
    for name, (_, optimizers) in SHARDED.items():
        for optimizer in optimizers:
            saved = torch.load(tmp_path / f"{optimizer}-{name}-0.pt")
            assert all(torch.isfinite(torch.tensor(saved["loss"]))), (name, optimizer)
            moved = [k for k, v in saved["after"].items() if not torch.equal(v, saved["before"][k])]
            assert moved, f"{name} with {optimizer} left every weight where it started"
