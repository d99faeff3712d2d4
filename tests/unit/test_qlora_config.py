"""model.quantization_bit (QLoRA) is refused where it cannot run, with the reason and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from raytune_ft.config import ConfigError, load_config


def test_cpu_run_is_refused_with_the_fix() -> None:
    with pytest.raises(ConfigError, match=r"quantization_bit 4 \(QLoRA\) needs CUDA GPUs.*scaling.use_gpu: true"):
        load_config(None, ["model.quantization_bit=4"])


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["adapter.type=full"], "needs adapter.type lora"),
        (["scaling.strategy=fsdp2"], "runs with scaling.strategy ddp"),
    ],
)
def test_qlora_needs_lora_and_ddp(extra: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, ["model.quantization_bit=8", "scaling.use_gpu=true", *extra])


def test_llamafactory_quantization_bit_maps(tmp_path: Path) -> None:
    yaml = tmp_path / "lf.yaml"
    yaml.write_text("model_name_or_path: x\nquantization_bit: 4\n")
    with pytest.raises(ConfigError, match="needs CUDA GPUs"):
        load_config(yaml)
    cfg = load_config(yaml, ["scaling.use_gpu=true"])
    assert cfg.model.quantization_bit == 4
