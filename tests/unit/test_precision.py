"""train.precision apart from model.dtype: bf16 autocast tracks fp32, trainable weights and optimizer moments stay
float32 over a bf16 base, an fp16 overflow skips its update and halves the loss scale, a full-tuning checkpoint
is written in the storage dtype and still resumes exactly, and FSDP2 keeps float32 shards while it computes in
bf16 (two gloo processes, no Ray)."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp
from safetensors import safe_open

from raytune_ft.config import ConfigError, load_config
from raytune_ft.train import TrainState, build_training, restore_state, save_checkpoint
from raytune_ft.train.precision import compute_precision
from raytune_ft.train.strategies import deepspeed_config
from tests.unit.test_step import identity_batch, job

CPU = torch.device("cpu")
LORA = ["adapter.type=lora", "adapter.rank=16", "adapter.alpha=32"]
BF16 = ["model.dtype=bfloat16", "train.precision=bf16"]


def losses(core: Any, tokenizer: Any, steps: int) -> list[float]:
    out = []
    for i in range(steps):
        stats = core.step([identity_batch(tokenizer, 4, offset=(4 * i) % 40)])
        out.append(stats.loss_sum / stats.terms)
    return out


@pytest.mark.parametrize(
    ("adapter", "tolerance"),
    [([*LORA, "train.learning_rate=1e-2"], 0.1), (["adapter.type=full", "train.learning_rate=1e-3"], 0.01)],
    ids=["lora", "full"],
)
def test_bf16_tracks_fp32_over_20_steps(
    tiny_model_dir: Path, tokenizer: Any, adapter: list[str], tolerance: float
) -> None:
    """Stated tolerance, every step: LoRA within 0.1 nats (1% of the ~10-nat loss; its frozen base is rounded to
    bf16, so the two runs do not even start from the same weights); full tuning within 0.01 nats (its float32
    masters are the fp32 run's weights, only the activations round). Measured: 0.061 and 0.0012."""
    settings = [*adapter, "train.lr_scheduler=constant"]
    torch.manual_seed(0)
    reference = losses(build_training(job(tiny_model_dir, *settings), 20, CPU)[0], tokenizer, 20)
    torch.manual_seed(0)
    mixed = losses(build_training(job(tiny_model_dir, *settings, *BF16), 20, CPU)[0], tokenizer, 20)
    assert reference[-1] < reference[0] - 0.5, reference
    gaps = [abs(a - b) for a, b in zip(reference, mixed, strict=True)]
    assert max(gaps) < tolerance, gaps


def test_trainable_weights_and_moments_stay_float32_over_a_bf16_base(tiny_model_dir: Path, tokenizer: Any) -> None:
    core, _ = build_training(job(tiny_model_dir, *LORA, *BF16), 10, CPU)
    assert core.precision.autocast_dtype == torch.bfloat16 and core.precision.scaler is None
    core.step([identity_batch(tokenizer, 4)])
    trainable = {n: p for n, p in core.model.named_parameters() if p.requires_grad}
    frozen = {n: p for n, p in core.model.named_parameters() if not p.requires_grad}
    assert trainable and all(p.dtype == torch.float32 for p in trainable.values())
    assert {p.dtype for n, p in frozen.items() if "norm" not in n} == {torch.bfloat16}
    moments = [t for state in core.optimizer.state.values() for t in state.values() if t.dim() > 0]
    assert moments and all(t.dtype == torch.float32 for t in moments)


def test_pure_bf16_keeps_everything_in_bf16(tiny_model_dir: Path, tokenizer: Any) -> None:
    core, _ = build_training(job(tiny_model_dir, *LORA, "model.dtype=bfloat16", "train.precision=pure_bf16"), 10, CPU)
    assert core.precision.autocast_dtype is None
    core.step([identity_batch(tokenizer, 4)])
    assert {p.dtype for p in core.model.parameters() if p.requires_grad} == {torch.bfloat16}
    moments = [t for state in core.optimizer.state.values() for t in state.values() if t.dim() > 0]
    assert moments and all(t.dtype == torch.bfloat16 for t in moments)


def test_fp16_overflow_skips_the_update_and_lowers_the_scale(tiny_model_dir: Path, tokenizer: Any) -> None:
    core, _ = build_training(job(tiny_model_dir, *LORA, "train.precision=fp16"), 10, CPU)
    scaler = core.precision.scaler
    assert isinstance(scaler, torch.amp.GradScaler) and core.precision.autocast_dtype == torch.float16
    # A scale no fp16 gradient survives: 2^40 times a loss of ~10 overflows fp16's 65504.
    core.precision.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**40)
    before = {n: p.detach().clone() for n, p in core.model.named_parameters()}
    lr_before = core.scheduler.get_last_lr()
    stats = core.step([identity_batch(tokenizer, 4)])
    assert stats.skipped and stats.loss_scale == 2.0**39
    assert all(torch.equal(p, before[n]) for n, p in core.model.named_parameters()), "a skipped step moved weights"
    assert core.scheduler.get_last_lr() == lr_before and not core.optimizer.state
    applied = [core.step([identity_batch(tokenizer, 4)]) for _ in range(40)]
    first = next(i for i, s in enumerate(applied) if not s.skipped)
    assert all(s.skipped for s in applied[:first]) and applied[first].loss_scale <= 2.0**24
    assert any(not torch.equal(p, before[n]) for n, p in core.model.named_parameters() if p.requires_grad)


def test_fp16_trains_and_the_loss_scale_resumes(tiny_model_dir: Path, tokenizer: Any, tmp_path: Path) -> None:
    cfg = job(tiny_model_dir, *LORA, "train.precision=fp16", "train.learning_rate=1e-2", "train.lr_scheduler=constant")
    core, tok = build_training(cfg, 20, CPU)
    curve = losses(core, tokenizer, 12)
    assert curve[-1] < curve[0] - 0.5, curve
    save_checkpoint(tmp_path, core, tok, cfg, TrainState(global_step=12))
    resumed, _ = build_training(cfg, 20, CPU, checkpoint=tmp_path)
    restore_state(tmp_path, resumed, cfg.train)
    assert resumed.precision.loss_scale == core.precision.loss_scale


def test_full_tuning_checkpoint_is_in_the_storage_dtype_and_resumes_exactly(
    tiny_model_dir: Path, tokenizer: Any, tmp_path: Path
) -> None:
    cfg = job(tiny_model_dir, "adapter.type=full", *BF16)
    core, tok = build_training(cfg, 10, CPU)
    assert {p.dtype for p in core.model.parameters()} == {torch.float32}  # the masters
    for i in range(2):
        core.step([identity_batch(tokenizer, 4, offset=4 * i)])
    save_checkpoint(tmp_path, core, tok, cfg, TrainState(global_step=2))
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as saved:
        assert {saved.get_slice(k).get_dtype() for k in saved.keys()} == {"BF16"}  # noqa: SIM118
    assert json.loads((tmp_path / "config.json").read_text())["dtype"] == "bfloat16"
    resumed, _ = build_training(cfg, 10, CPU, checkpoint=tmp_path)
    restore_state(tmp_path, resumed, cfg.train)
    for i in range(2, 4):
        batch = identity_batch(tokenizer, 4, offset=4 * i)
        torch.manual_seed(i)
        a = core.step([batch])
        torch.manual_seed(i)
        b = resumed.step([batch])
        assert a.loss_sum == b.loss_sum
    for (name, p), q in zip(core.model.named_parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(p, q), name


def test_precision_resolution_and_refusals(tiny_model_dir: Path) -> None:
    def resolved(*overrides: str) -> str:
        return compute_precision(load_config(None, [f"model.source={tiny_model_dir}", *overrides]))

    assert resolved() == "fp32" and resolved("model.dtype=bfloat16") == "bf16"
    assert (
        resolved("scaling.use_gpu=true") == "bf16" and resolved("scaling.use_gpu=true", "model.dtype=float16") == "fp16"
    )
    for overrides, message in [
        (["model.dtype=bfloat16", "train.precision=fp32"], "use model.dtype float32, or train.precision auto"),
        (["model.dtype=bfloat16", "train.precision=fp16"], "use model.dtype float32 or float16"),
        (["train.precision=pure_bf16"], "use model.dtype bfloat16"),
        (
            ["model.dtype=bfloat16", "train.precision=pure_bf16", "scaling.strategy=deepspeed"],
            "use train.precision bf16",
        ),
    ]:
        with pytest.raises(ConfigError, match=message):
            load_config(None, [f"model.source={tiny_model_dir}", *overrides])


@pytest.mark.parametrize(
    ("flags", "dtype", "precision"),
    [({"bf16": True}, "bfloat16", "bf16"), ({"bf16": True, "pure_bf16": True}, "bfloat16", "pure_bf16"),
     ({"bf16": False}, "float32", "auto")],
)  # fmt: skip
def test_llamafactory_precision_flags_map(
    tmp_path: Path, tiny_model_dir: Path, flags: dict[str, bool], dtype: str, precision: str
) -> None:
    path = tmp_path / "lf.yaml"
    path.write_text(
        "".join(f"{k}: {str(v).lower()}\n" for k, v in {"model_name_or_path": tiny_model_dir, **flags}.items())
    )
    cfg = load_config(path)
    assert (cfg.model.dtype, cfg.train.precision) == (dtype, precision)


def test_deepspeed_sections_follow_the_precision(tiny_model_dir: Path) -> None:
    def sections(*overrides: str) -> tuple[bool, bool]:
        config = deepspeed_config(load_config(None, [f"model.source={tiny_model_dir}", *overrides]), 2)
        return config["bf16"]["enabled"], config["fp16"]["enabled"]

    assert sections() == (False, False)
    assert sections("model.dtype=bfloat16") == (True, False)
    assert sections("train.precision=bf16") == (True, False)
    assert sections("train.precision=fp16") == (False, True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _fsdp2_worker(rank: int, port: int, model_dir: str, batches: list[dict[str, torch.Tensor]], out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE="2", LOCAL_WORLD_SIZE="2")  # fmt: skip
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2)
    try:
        for precision in ("bf16", "fp16"):
            cfg = job(Path(model_dir), "adapter.type=full", "scaling.strategy=fsdp2", f"train.precision={precision}")
            core, _ = build_training(cfg, 10, CPU)
            shards = {p.to_local().dtype for p in core.model.parameters()}
            stats = [core.step([batches[rank + 2 * i]]) for i in range(3)]
            torch.save({"shards": shards, "loss": [s.loss_sum / s.terms for s in stats],
                        "skipped": [s.skipped for s in stats], "scaler": type(core.precision.scaler).__name__},
                       f"{out}/{precision}-{rank}.pt")  # fmt: skip
    finally:
        torch.distributed.destroy_process_group()


def test_fsdp2_keeps_float32_shards_and_computes_in_half_precision(
    tiny_model_dir: Path, tokenizer: Any, tmp_path: Path
) -> None:
    batches = [identity_batch(tokenizer, 2, offset=2 * i) for i in range(6)]
    mp.spawn(_fsdp2_worker, args=(_free_port(), str(tiny_model_dir), batches, str(tmp_path)), nprocs=2)
    for precision, scaler in (("bf16", "NoneType"), ("fp16", "ShardedGradScaler")):
        saved = torch.load(tmp_path / f"{precision}-0.pt")
        assert saved["shards"] == {torch.float32} and saved["scaler"] == scaler, saved
        assert not any(saved["skipped"]) and saved["loss"][-1] < saved["loss"][0], saved
