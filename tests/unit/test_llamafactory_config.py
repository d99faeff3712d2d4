"""Flat LLaMA-Factory YAMLs: translated into our config, ignored keys warned once, and keys we
cannot honour listed together in one error."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import pytest

from raytune_ft.cli import main
from raytune_ft.config import ConfigError, ConfigWarning, load_config

SHIPPED = Path(__file__).parents[2] / "configs" / "llamafactory" / "smollm2_lora_sft.yaml"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "lf.yaml"
    path.write_text(text)
    return path


def test_shipped_llamafactory_yaml_translates() -> None:
    with pytest.warns(ConfigWarning, match=r"overwrite_cache \(data.tokenized_path is reused"):
        cfg = load_config(SHIPPED)
    assert cfg.model.source == "builtin:smollm2-135m-instruct" and cfg.model.trust_remote_code
    assert cfg.data.template == "smollm2"
    assert (cfg.adapter.type, cfg.adapter.rank, cfg.adapter.target) == ("lora", 8, ["all"])
    assert cfg.data.dataset == ["identity", "alpaca_300"]
    assert (cfg.data.cutoff_len, cfg.data.max_samples, cfg.data.tokenize_concurrency) == (512, 1000, 1)
    assert (cfg.train.per_device_batch_size, cfg.train.gradient_accumulation_steps) == (4, 2)
    assert (cfg.train.learning_rate, cfg.train.num_epochs, cfg.train.warmup_ratio) == (1e-4, 3.0, 0.1)
    assert (cfg.train.storage_path, cfg.train.run_name) == ("saves/smollm2-135m/lora", "sft")
    assert cfg.scaling.num_workers == 2 and cfg.scaling.collective_timeout_s == 180000000


def test_max_steps_minus_one_means_epochs(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "model_name_or_path: x\nmax_steps: -1\nbf16: false\nmask_history: true\n"))
    assert cfg.train.max_steps is None and cfg.model.dtype == "float32"
    assert cfg.data.mask_history is True


def test_overrides_use_our_keys_after_translation(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "model_name_or_path: x\nlearning_rate: 1e-4\n"), ["train.learning_rate=0.5"])
    assert cfg.train.learning_rate == 0.5


def test_keys_we_cannot_honour_are_listed_together(tmp_path: Path) -> None:
    text = (
        "model_name_or_path: x\nuse_badam: true\nadditional_target: embed_tokens\ndo_eval: true\nlora_rnak: 8\n"
        "hf_hub_token: hf_secret\nlr_scheduler_type: polynomial\nlogging_nan_inf_filter: true\n"
    )
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text))
    message = str(err.value)
    for piece in ("use_badam: True: BAdam (training one block of layers at a time) is not supported",
                  "additional_target: 'embed_tokens': training extra full modules",
                  "do_eval: True asks for evaluation without a validation split",
                  "unknown LLaMA-Factory key 'lora_rnak'; did you mean 'lora_rank'",
                  "hf_hub_token: 'hf_secret': tokens do not belong in a config file",
                  "lr_scheduler_type: 'polynomial': use cosine, linear or constant",
                  "logging_nan_inf_filter: a Hugging Face Trainer argument"):  # fmt: skip
        assert piece in message, piece


def test_switched_off_features_are_fine(tmp_path: Path) -> None:
    with pytest.warns(ConfigWarning, match=r"use_badam \(switched off, as here\)"):
        load_config(write(tmp_path, "model_name_or_path: x\nuse_badam: false\ndo_eval: false\ndeepspeed: null\n"))


def test_optimizer_keys_map(tmp_path: Path) -> None:
    galore = (  # the keys of LLaMA-Factory's GaLore example (layer-wise stepping is not used here)
        "model_name_or_path: x\nstage: sft\ndo_train: true\nfinetuning_type: full\nuse_galore: true\n"
        "galore_layerwise: true\ngalore_target: all\ngalore_rank: 128\ngalore_scale: 2.0\ndataset: identity\n"
    )
    with pytest.warns(ConfigWarning, match="galore_layerwise"):
        cfg = load_config(write(tmp_path, galore))
    assert cfg.train.optimizer == "galore_adamw" and cfg.train.galore.rank == 128 and cfg.train.galore.target == ["all"]
    apollo = (
        "model_name_or_path: x\nfinetuning_type: full\nuse_apollo: true\napollo_rank: 64\napollo_scale_type: tensor\n"
    )
    cfg = load_config(write(tmp_path, apollo))
    assert cfg.train.optimizer == "apollo_adamw" and (cfg.train.apollo.rank, cfg.train.apollo.scale_type) == (
        64,
        "tensor",
    )
    cfg = load_config(write(tmp_path, "model_name_or_path: x\nfinetuning_type: full\nuse_muon: true\n"))
    assert cfg.train.optimizer == "muon"
    text = "model_name_or_path: x\noptim: adamw_bnb_8bit\nadam_beta2: 0.95\nadam_epsilon: 1e-6\nloraplus_lr_ratio: 16\n"
    cfg = load_config(write(tmp_path, text))
    assert (cfg.train.optimizer, cfg.train.adam_beta2, cfg.train.adam_epsilon) == ("adamw_8bit", 0.95, 1e-6)
    assert cfg.train.loraplus_lr_ratio == 16.0
    bad = "model_name_or_path: x\nfinetuning_type: full\nuse_galore: true\nuse_apollo: true\noptim: lion_32bit\n"
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, bad))
    assert "use_galore, use_apollo and use_muon exclude each other" in str(err.value)
    assert "optim: 'lion_32bit': use one of adamw_torch" in str(err.value)
    with pytest.raises(ConfigError, match="use_galore: True runs with optim adamw_torch, not 'sgd'"):
        load_config(write(tmp_path, "model_name_or_path: x\nfinetuning_type: full\nuse_galore: true\noptim: sgd\n"))


def test_data_engine_keys_map(tmp_path: Path) -> None:
    text = (
        "model_name_or_path: x\ndataset: a,b\ntemplate: chatml\nneat_packing: true\nval_size: 0.1\n"
        "mix_strategy: interleave_under\ninterleave_probs: 0.8,0.2\ntokenized_path: cache/tok\neval_steps: 50\n"
        "eval_strategy: steps\nstreaming: true\n"
    )
    with pytest.warns(ConfigWarning, match="eval_strategy"):
        cfg = load_config(write(tmp_path, text))
    assert (cfg.data.template, cfg.data.packing, cfg.data.val_size) == ("chatml", True, 0.1)
    assert (cfg.data.mix_strategy, cfg.data.interleave_probs) == ("interleave_under", [0.8, 0.2])
    assert (cfg.data.tokenized_path, cfg.train.eval_steps) == ("cache/tok", 50)


def test_template_names_are_checked_as_the_file_loads(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "model_name_or_path: x\ntemplate: qwen3_nothink\ntool_format: qwen\n"))
    assert (cfg.data.template, cfg.data.tool_format) == ("qwen3_nothink", "qwen")
    with pytest.raises(ConfigError, match=r"unknown chat template 'qwen3_no_think' \(did you mean 'qwen3_nothink'\?\)"):
        load_config(write(tmp_path, "model_name_or_path: x\ntemplate: qwen3_no_think\n"))


def test_a_ppo_yaml_maps_its_reward_model_generation_and_batch(tmp_path: Path) -> None:
    """LLaMA-Factory's PPO example as its users write it: the reward model becomes an rm: reward, the generation
    keys drive the rollouts, and a PPO step's prompts (batch x accumulation x buffer) one generated batch."""
    text = (
        "model_name_or_path: x\nreward_model: saves/rm\nreward_model_type: lora\nstage: ppo\ndo_train: true\n"
        "finetuning_type: lora\ndataset: arithmetic_1k\nper_device_train_batch_size: 2\n"
        "gradient_accumulation_steps: 4\nppo_buffer_size: 2\nppo_epochs: 2\nppo_target: 3\nppo_score_norm: true\n"
        "ppo_whiten_rewards: true\nmax_new_tokens: 64\ntemperature: 0.7\ntop_k: 0\ntop_p: 0.9\n"
    )
    with pytest.warns(ConfigWarning, match="top_k"):
        cfg = load_config(write(tmp_path, text))
    m = cfg.method
    assert (m.stage, m.loss, m.reward, m.group_size, m.kl, m.kl_coef) == ("ppo", "ppo", ["rm:saves/rm"], 1, "k1", 0.2)
    assert (m.ppo_buffer_size, m.ppo_epochs, m.ppo_target, m.ppo_score_norm, m.ppo_whiten_rewards) == (2, 2, 3.0, True,
                                                                                                      True)  # fmt: skip
    assert (m.max_new_tokens, m.temperature, cfg.rollout.top_p) == (64, 0.7, 0.9)
    assert (cfg.rollout.prompts_per_step, cfg.train.gradient_accumulation_steps) == (16, 1)
    assert cfg.train.per_device_batch_size == 2


def test_unsupported_values_fail_in_our_terms(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"reward_model_type: 'api': a reward server is not supported"):
        load_config(
            write(tmp_path, "model_name_or_path: x\nstage: ppo\nreward_model: http://x\nreward_model_type: api\n")
        )
    with pytest.raises(ConfigError, match=r"method\.loss"):
        load_config(write(tmp_path, "model_name_or_path: x\nstage: dpo\npref_loss: kto_pair\n"))


def test_validate_explain_prints_the_translation(capsys: Any) -> None:
    assert main(["validate", str(SHIPPED), "--explain"]) == 0
    captured = capsys.readouterr()
    assert "lora_rank: 8 -> adapter.rank: 8" in captured.out
    assert "output_dir: 'saves/smollm2-135m/lora/sft' -> train.run_name: 'sft'" in captured.out


def test_adapter_family_keys_map(tmp_path: Path) -> None:
    text = (
        "model_name_or_path: x\nfinetuning_type: freeze\nfreeze_trainable_layers: -1\n"
        "freeze_trainable_modules: mlp,self_attn\nfreeze_extra_modules: embed_tokens\n"
        "use_dora: true\nuse_rslora: true\n"
    )
    cfg = load_config(write(tmp_path, text))
    assert (cfg.adapter.type, cfg.adapter.freeze_trainable_layers) == ("freeze", -1)
    assert cfg.adapter.freeze_trainable_modules == ["mlp", "self_attn"] and cfg.adapter.freeze_extra_modules == [
        "embed_tokens"
    ]
    assert cfg.adapter.use_dora and cfg.adapter.use_rslora
    cfg = load_config(write(tmp_path, "model_name_or_path: x\npissa_init: true\npissa_iter: -1\n"))
    assert cfg.adapter.pissa_init and cfg.adapter.pissa_iter == -1


def test_disable_gradient_checkpointing_maps(tmp_path: Path) -> None:
    assert load_config(
        write(tmp_path, "model_name_or_path: x\ndisable_gradient_checkpointing: false\n")
    ).model.gradient_checkpointing
    assert not load_config(
        write(tmp_path, "model_name_or_path: x\ndisable_gradient_checkpointing: true\n")
    ).model.gradient_checkpointing


EXAMPLES = Path(__file__).parents[1] / "fixtures" / "llamafactory"


@pytest.mark.parametrize(
    "recipe, kind",
    [(path.relative_to(EXAMPLES / "examples").as_posix(), kind)
     for kind, folder in (("train", "train_lora"), ("train", "train_full"), ("train", "extras/pissa"),
                          ("chat", "inference"), ("export", "merge_lora"), ("predict", "extras/nlg_eval"))
     for path in sorted((EXAMPLES / "examples" / folder).glob("*.yaml"))],
)  # fmt: skip
def test_llamafactory_examples_translate(recipe: str, kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from raytune_ft.config import llamafactory_translation

    monkeypatch.chdir(EXAMPLES)  # their deepspeed paths are relative to a LLaMA-Factory checkout
    path = Path("examples") / recipe
    translation = llamafactory_translation(path)
    assert translation is not None and translation.kind == kind
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cfg = load_config(path)
    assert cfg.model.trust_remote_code
    # Keys that change nothing here are named in one warning (an inference file has none).
    assert len([w for w in caught if issubclass(w.category, ConfigWarning)]) == (kind != "chat")


def test_recipe_keys_land_where_llamafactory_means_them(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(EXAMPLES)
    with pytest.warns(ConfigWarning):
        sft = load_config("examples/train_lora/qwen3_lora_sft.yaml")
        ds3 = load_config("examples/train_full/qwen3_full_sft.yaml")
        predict = load_config("examples/extras/nlg_eval/llama3_lora_predict.yaml")
        merge = load_config("examples/merge_lora/qwen3_lora_sft.yaml")
        chat = load_config("examples/inference/qwen3_lora_sft.yaml")
    assert (sft.data.template, sft.model.dtype, sft.scaling.collective_timeout_s) == ("qwen3_nothink", "bfloat16",
                                                                                      180000000)  # fmt: skip
    assert (sft.train.storage_path, sft.train.run_name) == ("saves/qwen3-4b/lora", "sft")
    ds_json = json.loads((EXAMPLES / "examples/deepspeed/ds_z3_config.json").read_text())
    assert (ds3.scaling.strategy, ds3.scaling.deepspeed, ds3.adapter.type) == ("deepspeed", ds_json, "full")
    assert predict.eval.tasks == ["generation"] and predict.eval.output_dir == "saves/llama3-8b/lora/predict"
    assert predict.eval.dataset == ["identity", "alpaca_en_demo"] and predict.data.max_samples == 50
    assert predict.eval.max_samples is None and predict.eval.batch_size == 1
    assert predict.adapter.init_from == ["saves/llama3-8b/lora/sft"]
    assert (merge.export.out_dir, merge.export.max_shard_size) == ("saves/qwen3_sft_merged", "5GB")
    assert merge.adapter.init_from == ["saves/qwen3-4b/lora/sft"]
    assert (chat.serve.engine, chat.data.template) == ("hf", "qwen3_nothink")


def test_a_recipe_given_to_the_wrong_verb_names_the_right_one(capsys: pytest.CaptureFixture[str]) -> None:
    merge = EXAMPLES / "examples" / "merge_lora" / "qwen3_lora_sft.yaml"
    assert main(["train", str(merge)]) == 2
    assert f"{merge} is a merge (export_dir) config: run raytune-ft export {merge}" in capsys.readouterr().err


def test_keys_that_combine(tmp_path: Path) -> None:
    text = (
        "model_name_or_path: org/model\nmodel_revision: v1.0\nray_storage_path: bucket/runs\n"
        "ray_storage_filesystem: gcs\nresources_per_worker: {CPU: 2, GPU: 1}\nplacement_strategy: SPREAD\n"
        'ray_init_kwargs: \'{"runtime_env": {"env_vars": {"A": "1"}}}\'\nwarmup_steps: 7\nflash_attn: disabled\n'
    )
    cfg = load_config(write(tmp_path, text))
    assert cfg.model.source == "org/model@v1.0" and cfg.train.storage_path == "gs://bucket/runs"
    assert (cfg.scaling.cpus_per_worker, cfg.scaling.use_gpu, cfg.scaling.placement_strategy) == (2.0, True, "SPREAD")
    assert cfg.scaling.ray_init == {"runtime_env": {"env_vars": {"A": "1"}}}
    assert (cfg.train.warmup_steps, cfg.model.attn_implementation) == (7, "eager")


def test_every_key_has_one_meaning() -> None:
    from raytune_ft.config.llamafactory import KEYS

    for key, rule in KEYS.items():
        assert sum(map(bool, (rule.apply, rule.ignored, rule.refused))) == 1, key


def test_the_key_table_in_the_docs_is_current() -> None:
    from raytune_ft.config.llamafactory import key_table

    doc = (Path(__file__).parents[2] / "docs" / "llamafactory.md").read_text()
    assert doc.rstrip().endswith(key_table()), (
        "docs/llamafactory.md's key table is stale: replace it with the output of "
        '`python -c "from raytune_ft.config.llamafactory import key_table; print(key_table())"`'
    )


def test_model_revision_applies_to_hub_ids_only(tmp_path: Path) -> None:
    local = tmp_path / "model"
    local.mkdir()
    assert load_config(write(tmp_path, f"model_name_or_path: {local}\nmodel_revision: main\n")).model.source == str(
        local
    )
    with pytest.raises(ConfigError, match=r"model_revision: 'v2'.* is not a Hub id"):
        load_config(write(tmp_path, f"model_name_or_path: {local}\nmodel_revision: v2\n"))
