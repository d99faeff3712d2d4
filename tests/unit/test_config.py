"""Config loading: typos and wrong types fail with messages that name the key and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from raytune_ft.config import ConfigError, JobConfig, dump_config, load_config, with_values
from raytune_ft.config.template_names import TEMPLATE_NAMES, closest_name


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(text)
    return path


def test_defaults_validate() -> None:
    cfg = load_config(None)
    assert cfg.model.source.startswith("builtin:")
    assert cfg.adapter.type == "lora"


def test_misspelled_key_names_it_and_suggests(tmp_path: Path) -> None:
    path = write(tmp_path, "train:\n  learing_rate: 0.1\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert str(path) in message
    assert "'train.learing_rate'" in message
    assert "did you mean 'train.learning_rate'" in message


def test_misspelled_section_suggests(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown key 'adaptor'; did you mean 'adapter'"):
        load_config(write(tmp_path, "adaptor:\n  rank: 4\n"))


def test_wrong_type_names_field_and_expected_type(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, "train:\n  max_steps: lots\n"))
    assert "train.max_steps" in str(err.value)
    assert "valid integer" in str(err.value)
    assert "'lots'" in str(err.value)


def test_out_of_range_value(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"adapter.rank: Input should be greater than or equal to 1"):
        load_config(write(tmp_path, "adapter:\n  rank: 0\n"))


def test_overrides_are_yaml_typed_and_win(tmp_path: Path) -> None:
    path = write(tmp_path, "train:\n  max_steps: 100\n")
    cfg = load_config(path, ["train.max_steps=7", "data.dataset=identity,alpaca_300", "adapter.target=q_proj,v_proj"])
    assert cfg.train.max_steps == 7
    assert cfg.data.dataset == ["identity", "alpaca_300"]
    assert cfg.adapter.target == ["q_proj", "v_proj"]


def test_override_typo_is_caught() -> None:
    with pytest.raises(ConfigError, match=r"did you mean 'scaling\.num_workers'"):
        load_config(None, ["scaling.num_worker=2"])


def test_bad_override_syntax() -> None:
    with pytest.raises(ConfigError, match=r"not of the form section\.key=value"):
        load_config(None, ["train.max_steps"])


def test_missing_and_non_mapping_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(write(tmp_path, "- a\n- b\n"))


def test_dump_round_trips(tmp_path: Path) -> None:
    cfg = load_config(None, ["train.max_steps=3", "data.placeholders.name=Bob"])
    again = load_config(write(tmp_path, dump_config(cfg)))
    assert again == cfg


def test_every_field_is_documented() -> None:
    for section_name, section in JobConfig.model_fields.items():
        assert section.description, section_name
        model = section.annotation
        assert model is not None
        for name, field in model.model_fields.items():  # type: ignore[union-attr]
            assert field.description, f"{section_name}.{name} has no docstring"


def test_unknown_template_names_fail_at_load_with_the_closest_name(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, "data:\n  template: qwen3_no_think\n  tool_format: qwen35\n"))
    message = str(err.value)
    assert "data.template" in message and "unknown chat template 'qwen3_no_think'" in message
    assert "(did you mean 'qwen3_nothink'?)" in message
    assert "data.tool_format" in message and "unknown tool format 'qwen35' (did you mean 'qwen3_5'?)" in message
    # A sweep's trial config is checked the same way.
    with pytest.raises(ConfigError, match=r"unknown chat template 'lama3' \(did you mean 'llama3'\?\)"):
        with_values(load_config(None), {"data.template": "lama3"})
    cfg = load_config(None, ["data.template=qwen3_nothink", "data.tool_format=llama3"])
    assert (cfg.data.template, cfg.data.tool_format) == ("qwen3_nothink", "llama3")


def test_closest_name_prefers_the_fewest_edits() -> None:
    # difflib ranks 'chatglm3' first for 'chatlm'; a swap of two letters ('chatml') is one edit.
    assert closest_name("chatlm", TEMPLATE_NAMES) == "chatml"
    assert closest_name("qwen3_no_think", TEMPLATE_NAMES) == "qwen3_nothink"
    assert closest_name("zzzz", TEMPLATE_NAMES) is None


@pytest.mark.parametrize(
    ("kernel", "message"),
    [("flash_attention_2", "runs on CUDA only"), ("flash_attention_3", "runs on CUDA only"),
     ("flex_attention", "no backward pass on CPU")],
)  # fmt: skip
def test_cuda_only_attention_kernels_are_refused_on_cpu(kernel: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, [f"model.attn_implementation={kernel}"])
    assert load_config(None, [f"model.attn_implementation={kernel}", "scaling.use_gpu=true"])


@pytest.mark.parametrize(
    ("value", "kernel"),
    [("auto", "auto"), ("sdpa", "sdpa"), ("disabled", "eager"), ("fa2", "flash_attention_2"),
     ("fa3", "flash_attention_3")],
)  # fmt: skip
def test_llamafactory_flash_attn_maps(tmp_path: Path, value: str, kernel: str) -> None:
    path = write(tmp_path, f"model_name_or_path: x\nflash_attn: {value}\n")
    overrides = [] if kernel in ("auto", "sdpa", "eager") else ["scaling.use_gpu=true"]
    assert load_config(path, overrides).model.attn_implementation == kernel
