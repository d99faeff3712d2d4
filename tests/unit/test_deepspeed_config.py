"""scaling.deepspeed: ZeRO stages and LLaMA-Factory's DeepSpeed JSON files, checked at the edge and
filled in for the run (no DeepSpeed engine is started here; tests/integration/test_strategies.py does)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from raytune_ft.config import ConfigError, load_config
from raytune_ft.train.strategies import deepspeed_config

SHIPPED = Path(__file__).parents[2] / "configs" / "deepspeed"


def test_stage_number_with_offload() -> None:
    cfg = load_config(None, ["scaling.strategy=deepspeed", "scaling.deepspeed=3", "scaling.deepspeed_offload=all",
                             "train.per_device_batch_size=4", "train.gradient_accumulation_steps=2"])  # fmt: skip
    ds = deepspeed_config(cfg, world_size=2, hidden_size=64)
    assert ds["zero_optimization"] == {
        "stage": 3,
        "offload_optimizer": {"device": "cpu"},
        "offload_param": {"device": "cpu"},
    }
    assert (ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"], ds["train_batch_size"]) == (
        4,
        2,
        16,
    )
    assert ds["managed_gradient_accumulation"] is False and ds["bf16"]["enabled"] is False


def test_default_stage_is_two() -> None:
    ds = deepspeed_config(load_config(None, ["scaling.strategy=deepspeed"]), world_size=1)
    assert ds["zero_optimization"] == {"stage": 2}


def test_llamafactory_json_autos_are_filled() -> None:
    path = SHIPPED / "ds_z3_config.json"
    cfg = load_config(None, ["scaling.strategy=deepspeed", f"scaling.deepspeed={path}", "model.dtype=bfloat16",
                             "train.max_grad_norm=0.5"])  # fmt: skip
    ds = deepspeed_config(cfg, world_size=2, hidden_size=64)
    assert "auto" not in json.dumps(ds)
    zero = ds["zero_optimization"]
    assert (zero["stage"], zero["reduce_bucket_size"], zero["stage3_param_persistence_threshold"]) == (3, 4096, 640)
    assert ds["bf16"]["enabled"] is True and ds["fp16"]["enabled"] is False and ds["gradient_clipping"] == 0.5


def test_llamafactory_yaml_deepspeed_key_maps(tmp_path: Path) -> None:
    yaml = tmp_path / "lf.yaml"
    yaml.write_text(f"model_name_or_path: x\ndeepspeed: {SHIPPED / 'ds_z2_config.json'}\n")
    cfg = load_config(yaml)
    shipped = json.loads((SHIPPED / "ds_z2_config.json").read_text())
    assert cfg.scaling.strategy == "deepspeed" and cfg.scaling.deepspeed == shipped  # the file travels inside


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["scaling.deepspeed=2"], "need strategy: deepspeed"),
        (["scaling.strategy=deepspeed", "scaling.deepspeed=4"], "must be 0, 1, 2 or 3"),
        (["scaling.strategy=deepspeed", "scaling.deepspeed=2", "scaling.deepspeed_offload=all"], "needs ZeRO stage 3"),
        (
            ["scaling.strategy=deepspeed", "scaling.deepspeed=0", "scaling.deepspeed_offload=optimizer"],
            "stage 1, 2 or 3",
        ),
        (["scaling.strategy=deepspeed", "scaling.deepspeed=missing.json"], "missing.json is not a file"),
    ],
)
def test_bad_settings_are_refused(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_json_with_an_optimizer_or_bad_json_is_refused(tmp_path: Path) -> None:
    with_optimizer = tmp_path / "ds.json"
    with_optimizer.write_text(json.dumps({"optimizer": {"type": "AdamW"}, "zero_optimization": {"stage": 2}}))
    with pytest.raises(ConfigError, match=r"ds\.json has optimizer sections.*remove them"):
        load_config(None, ["scaling.strategy=deepspeed", f"scaling.deepspeed={with_optimizer}"])
    broken = tmp_path / "broken.json"
    broken.write_text('{"zero_optimization": {"stage": 2,}}')
    with pytest.raises(ConfigError, match=r"broken\.json is not valid JSON \(line 1"):
        load_config(None, ["scaling.strategy=deepspeed", f"scaling.deepspeed={broken}"])
