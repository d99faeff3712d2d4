"""``model.trust_remote_code`` reaches every load: a tiny model whose config.json maps the Auto classes to
Python files in its own folder (``auto_map``) loads through each stage with the flag and stops with one
clear error without it. Real transformers behaviour, no mocks."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from raytune_ft.config import JobConfig, ModelConfig, dump_config, load_config
from raytune_ft.models import ModelSourceError, load_causal_lm, load_for_inference

CUSTOM_CLASS = "TinyRemoteForCausalLM"

CONFIGURATION = """from transformers import LlamaConfig


class TinyRemoteConfig(LlamaConfig):
    model_type = "tiny-remote"
"""

MODELING = """from transformers import LlamaForCausalLM

from .configuration_tiny import TinyRemoteConfig


class TinyRemoteForCausalLM(LlamaForCausalLM):
    config_class = TinyRemoteConfig
"""


@pytest.fixture(scope="module")
def remote_model_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny llama as a model type transformers does not know, whose code ships in its folder."""
    folder = tmp_path_factory.mktemp("remote") / "tiny-remote"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "configuration_tiny.py").write_text(CONFIGURATION)
    (folder / "modeling_tiny.py").write_text(MODELING)
    config = json.loads((folder / "config.json").read_text())
    config |= {
        "model_type": "tiny-remote",
        "architectures": [CUSTOM_CLASS],
        "auto_map": {
            "AutoConfig": "configuration_tiny.TinyRemoteConfig",
            "AutoModelForCausalLM": f"modeling_tiny.{CUSTOM_CLASS}",
        },
    }
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.fixture(scope="module")
def remote_adapter(remote_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LoRA checkpoint of ours trained (here: made) on the custom-code model with the flag on."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = tmp_path_factory.mktemp("remote-run") / "checkpoint-000001"
    base = AutoModelForCausalLM.from_pretrained(remote_model_dir, trust_remote_code=True)
    torch.manual_seed(0)
    model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    for name, weight in model.named_parameters():
        if "lora_B" in name:
            weight.data.normal_(0, 0.1)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(remote_model_dir).save_pretrained(folder)
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": 1}))
    cfg = load_config(None, [f"model.source={remote_model_dir}", "model.trust_remote_code=true"])
    (folder / "raytune_ft.yaml").write_text(dump_config(cfg))
    return folder


def custom(model: Any) -> bool:
    """Whether ``model`` (peft-wrapped or not) is the class the model's own code defines."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return type(inner).__name__ == CUSTOM_CLASS and type(inner).__module__.startswith("transformers_modules")


def trusted(folder: Path) -> JobConfig:
    return load_config(None, [f"model.source={folder}", "model.trust_remote_code=true"])


def test_without_the_flag_the_load_stops_with_one_clear_error(remote_model_dir: Path) -> None:
    with pytest.raises(ModelSourceError, match=r"ships its own Python code.*model.trust_remote_code: true"):
        load_causal_lm(ModelConfig(source=str(remote_model_dir)), remote_model_dir)


def test_training_and_chat_load_it_with_the_flag(remote_model_dir: Path) -> None:
    from raytune_ft.train import job_tokenizer

    cfg = trusted(remote_model_dir)
    assert custom(load_causal_lm(cfg.model, remote_model_dir))
    assert job_tokenizer(cfg).chat_template  # the tokenizer loads through AutoTokenizer(trust_remote_code)
    model, _ = load_for_inference(None, config=cfg)
    assert custom(model)


def test_a_checkpoint_keeps_the_flag_for_chat_export_and_eval(remote_adapter: Path) -> None:
    from raytune_ft.evaluate.scorers import EvalModel
    from raytune_ft.export import merge_checkpoint

    model, _ = load_for_inference(None, remote_adapter)  # the checkpoint's own config says trust
    assert custom(model)
    assert custom(merge_checkpoint(remote_adapter).model)
    assert custom(EvalModel(None, str(remote_adapter)).load()[0])


def test_the_serving_engines_get_the_flag(remote_model_dir: Path, remote_adapter: Path) -> None:
    from raytune_ft.serve import plan_serving
    from raytune_ft.serve.hf import HFServer

    plan = plan_serving(trusted(remote_model_dir))
    assert plan.trust_remote_code
    assert custom(HFServer(plan).model)
    assert plan_serving(load_config(None), str(remote_adapter)).trust_remote_code  # from the checkpoint's config
    assert not plan_serving(load_config(None, [f"model.source={remote_model_dir}"])).trust_remote_code
    pytest.importorskip("vllm")
    from raytune_ft.serve.openai import llm_config

    assert llm_config(plan).engine_kwargs["trust_remote_code"] is True
