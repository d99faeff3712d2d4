"""model.quantization_bit (QLoRA) is refused where it cannot run, with the reason and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from raytune_ft.config import ConfigError, load_config


def test_cpu_run_is_accepted() -> None:
    assert load_config(None, ["model.quantization_bit=4"]).model.quantization_bit == 4  # bitsandbytes' CPU backend


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
    assert load_config(yaml).model.quantization_bit == 4
