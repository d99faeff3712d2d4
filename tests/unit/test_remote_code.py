"""``model.trust_remote_code`` reaches every load: a tiny model whose config.json and tokenizer_config.json map
the Auto classes to Python files in its own folder (``auto_map``) loads through each stage with the flag
(its own model and tokenizer classes) and stops with one clear error without it. Real transformers
behaviour, no mocks."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from raytune_ft.config import JobConfig, ModelConfig, dump_config, load_config
from raytune_ft.models import ModelSourceError, load_causal_lm, load_for_inference, load_row_tokenizer

CUSTOM_CLASS = "TinyRemoteForCausalLM"
CUSTOM_TOKENIZER = "TinyRemoteTokenizerFast"

CONFIGURATION = """from transformers import LlamaConfig


class TinyRemoteConfig(LlamaConfig):
    model_type = "tiny-remote"
"""

MODELING = """from transformers import LlamaForCausalLM

from .configuration_tiny import TinyRemoteConfig


class TinyRemoteForCausalLM(LlamaForCausalLM):
    config_class = TinyRemoteConfig
"""

TOKENIZATION = """from transformers import PreTrainedTokenizerFast


class TinyRemoteTokenizerFast(PreTrainedTokenizerFast):
    pass
"""


@pytest.fixture(scope="module")
def remote_model_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny llama as a model type transformers does not know, whose code (model and tokenizer class) ships
    in its folder."""
    folder = tmp_path_factory.mktemp("remote") / "tiny-remote"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "configuration_tiny.py").write_text(CONFIGURATION)
    (folder / "modeling_tiny.py").write_text(MODELING)
    (folder / "tokenization_tiny.py").write_text(TOKENIZATION)
    tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text())
    tokenizer_config |= {
        "tokenizer_class": CUSTOM_TOKENIZER,
        "auto_map": {"AutoTokenizer": [None, f"tokenization_tiny.{CUSTOM_TOKENIZER}"]},
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
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
    AutoTokenizer.from_pretrained(remote_model_dir, trust_remote_code=True).save_pretrained(folder)
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": 1}))
    cfg = load_config(None, [f"model.source={remote_model_dir}", "model.trust_remote_code=true"])
    (folder / "raytune_ft.yaml").write_text(dump_config(cfg))
    return folder


def custom(model: Any) -> bool:
    """Whether ``model`` (peft-wrapped or not) is the class the model's own code defines."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return type(inner).__name__ == CUSTOM_CLASS and type(inner).__module__.startswith("transformers_modules")


def custom_tokenizer(tokenizer: Any) -> bool:
    """Whether ``tokenizer`` is the class the model's own code defines (without the flag: the plain fast one)."""
    return type(tokenizer).__name__ == CUSTOM_TOKENIZER and type(tokenizer).__module__.startswith(
        "transformers_modules"
    )


def trusted(folder: Path) -> JobConfig:
    return load_config(None, [f"model.source={folder}", "model.trust_remote_code=true"])


def test_without_the_flag_the_load_stops_with_one_clear_error(remote_model_dir: Path) -> None:
    with pytest.raises(ModelSourceError, match=r"ships its own Python code.*model.trust_remote_code: true"):
        load_causal_lm(ModelConfig(source=str(remote_model_dir)), remote_model_dir)


def test_training_and_chat_load_it_with_the_flag(remote_model_dir: Path) -> None:
    from raytune_ft.train import job_tokenizer

    cfg = trusted(remote_model_dir)
    assert custom(load_causal_lm(cfg.model, remote_model_dir))
    assert custom_tokenizer(job_tokenizer(cfg)) and job_tokenizer(cfg).chat_template
    assert custom_tokenizer(load_row_tokenizer(cfg.model))  # what the data workers tokenize with
    assert not custom_tokenizer(load_row_tokenizer(str(remote_model_dir)))  # the test can tell: no flag, no class
    model, tokenizer = load_for_inference(None, config=cfg)
    assert custom(model) and custom_tokenizer(tokenizer)


def test_a_checkpoint_keeps_the_flag_for_chat_export_and_eval(remote_adapter: Path) -> None:
    from raytune_ft.evaluate.scorers import EvalModel
    from raytune_ft.export import merge_checkpoint

    model, tokenizer = load_for_inference(None, remote_adapter)  # the checkpoint's own config says trust
    assert custom(model) and custom_tokenizer(tokenizer)
    assert custom(merge_checkpoint(remote_adapter).model)
    assert custom(EvalModel(None, str(remote_adapter)).load()[0])


def test_a_full_weights_checkpoint_keeps_the_flag(remote_model_dir: Path, tmp_path: Path) -> None:
    """A full fine-tune's checkpoint folder, named as the model: its config says the code may run."""
    from raytune_ft.evaluate import eval_target

    folder = tmp_path / "full-run" / "checkpoint-000001"
    shutil.copytree(remote_model_dir, folder)
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": 1}))
    (folder / "raytune_ft.yaml").write_text(dump_config(trusted(remote_model_dir)))
    model, tokenizer = load_for_inference(str(folder))
    assert custom(model) and custom_tokenizer(tokenizer)
    target = eval_target(str(folder.parent), None)
    assert custom(target.model.load()[0]) and target.tokenizer.trust_remote_code


def test_vllm_gets_the_flag_and_the_base_of_an_adapter_as_transformers_does(
    remote_model_dir: Path, remote_adapter: Path, tmp_path: Path
) -> None:
    """``vllm_target`` (no vLLM needed to decide) takes an adapter's base exactly as ``load_for_inference`` does."""
    from raytune_ft.models.vllm_engine import vllm_target

    base, adapter = vllm_target(None, remote_adapter, None)
    assert base.trust_remote_code and adapter == remote_adapter
    untrusted = tmp_path / "untrusted" / "checkpoint-000001"  # trained without the flag; the config adds it
    shutil.copytree(remote_adapter, untrusted)
    (untrusted / "raytune_ft.yaml").write_text(dump_config(load_config(None, [f"model.source={remote_model_dir}"])))
    assert not vllm_target(None, untrusted, None)[0].trust_remote_code
    assert vllm_target(None, untrusted, trusted(remote_model_dir))[0].trust_remote_code
    plain = tmp_path / "plain"  # a PEFT folder with no raytune_ft config and no --model: no base to guess
    shutil.copytree(remote_adapter, plain, ignore=shutil.ignore_patterns("raytune_ft.yaml"))
    with pytest.raises(ModelSourceError, match="a PEFT adapter without a raytune_ft config: give its base model"):
        vllm_target(None, plain, None)
    assert vllm_target(str(remote_model_dir), plain, None)[0].source == str(remote_model_dir.resolve())


def test_the_serving_engines_get_the_flag(remote_model_dir: Path, remote_adapter: Path) -> None:
    from raytune_ft.serve import plan_serving
    from raytune_ft.serve.hf import HFServer

    plan = plan_serving(trusted(remote_model_dir))
    assert plan.trust_remote_code
    server = HFServer(plan)  # resolves the model itself, as a replica on any node does
    assert custom(server.model) and custom_tokenizer(server.tokenizer)
    assert plan_serving(load_config(None), str(remote_adapter)).trust_remote_code  # from the checkpoint's config
    assert not plan_serving(load_config(None, [f"model.source={remote_model_dir}"])).trust_remote_code
    pytest.importorskip("vllm")
    from raytune_ft.serve.openai import llm_config

    assert llm_config(plan).engine_kwargs["trust_remote_code"] is True
