"""``adapter.init_from`` (LLaMA-Factory's ``adapter_name_or_path``): training continues the last adapter from
its saved weights on a base with the others merged in, a plain PEFT folder works as well as our checkpoints,
and what training saves loads again in chat, export, eval and serve exactly as rebuilt by hand."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from hub_cache import hf_cache_entry

from raytune_ft.config import ConfigError, ConfigWarning, InputError, JobConfig, load_config
from raytune_ft.models import (
    ModelSourceError,
    adapter_folder,
    load_for_inference,
    merged_adapters,
    pin_sources,
    tokenizer_folder,
)
from raytune_ft.train import TrainState, build_training, save_checkpoint

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def ours(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory, adapter_checkpoint: Any) -> Path:
    """A run directory of ours: two LoRA checkpoints (r 8, alpha 16 on the attention projections)."""
    run = tmp_path_factory.mktemp("ours") / "sft-run"
    adapter_checkpoint(tiny_model_dir, run, 2, seed=1, source=str(tiny_model_dir))
    adapter_checkpoint(tiny_model_dir, run, 4, seed=2, source=str(tiny_model_dir))
    return run


@pytest.fixture(scope="module")
def plain(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Anyone's adapter, made with peft alone: r 4 on the MLP, no tokenizer, no raytune_ft files."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    folder = tmp_path_factory.mktemp("plain") / "mlp-adapter"
    torch.manual_seed(3)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir),
        LoraConfig(r=4, lora_alpha=8, target_modules=["gate_proj", "up_proj"], task_type="CAUSAL_LM"),
    )
    for name, weight in model.named_parameters():
        if "lora_B" in name:
            weight.data.normal_(0, 0.1)
    model.save_pretrained(folder)
    return folder


def job(model_dir: Path, *overrides: str) -> JobConfig:
    return load_config(None, [f"model.source={model_dir}", "train.learning_rate=1e-2", "train.seed=0", *overrides])


def adapter_weights(model: Any) -> dict[str, torch.Tensor]:
    """The model's adapter weights keyed as an adapter file keys them."""
    from peft import get_peft_model_state_dict

    return {k: v.detach().clone() for k, v in get_peft_model_state_dict(model).items()}


def saved_weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(folder / "adapter_model.safetensors")


def by_hand(base_dir: Path, merged: list[Path], adapter: Path) -> Any:
    """The reference: the base, each of ``merged`` merged in by peft, ``adapter`` on top."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    for folder in merged:
        model = PeftModel.from_pretrained(model, folder).merge_and_unload()
    return PeftModel.from_pretrained(model, adapter).eval()


def logits(model: Any, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


IDS = torch.tensor([[1, 42, 7, 99, 123, 5, 600, 2]])


def test_training_continues_the_adapter_from_its_saved_weights(
    tiny_model_dir: Path, ours: Path, identity_batch: Any
) -> None:
    cfg = job(tiny_model_dir, f"adapter.init_from={ours}", "adapter.rank=32")
    with pytest.warns(ConfigWarning, match=r"adapter.rank 32 is not used: training continues .* with its own r 8"):
        cfg = pin_sources(cfg)
    newest = ours / "checkpoint-000004"
    assert cfg.adapter.init_from == [str(newest)]  # the run directory fixed to its newest checkpoint
    assert (cfg.adapter.rank, cfg.adapter.alpha, cfg.adapter.target) == (
        8,
        16,
        ["k_proj", "o_proj", "q_proj", "v_proj"],
    )
    core, _ = build_training(cfg, 10, CPU)
    start = adapter_weights(core.model)
    assert start.keys() == saved_weights(newest).keys()
    assert all(torch.equal(start[k], v) for k, v in saved_weights(newest).items()), "starts where the adapter ended"
    frozen = {n: p.detach().clone() for n, p in core.model.named_parameters() if not p.requires_grad}
    trainable = {n for n, p in core.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    core.step([identity_batch(4)])
    after = adapter_weights(core.model)
    assert all(not torch.equal(start[k], after[k]) for k in start if "lora_A" in k), "the adapter trains on"
    assert all(torch.equal(p, frozen[n]) for n, p in core.model.named_parameters() if n in frozen)


def test_a_plain_peft_folder_starts_training_and_chat(tiny_model_dir: Path, plain: Path, identity_batch: Any) -> None:
    cfg = pin_sources(job(tiny_model_dir, f"adapter.init_from={plain}"))
    assert (cfg.adapter.rank, cfg.adapter.alpha, cfg.adapter.target) == (4, 8, ["gate_proj", "up_proj"])
    core, _ = build_training(cfg, 10, CPU)
    assert all(torch.equal(adapter_weights(core.model)[k], v) for k, v in saved_weights(plain).items())
    core.step([identity_batch(4)])
    model, tokenizer = load_for_inference(None, config=cfg)  # chat with model.source + init_from
    assert tokenizer.chat_template  # a PEFT folder has no tokenizer: the base model's
    assert torch.equal(logits(model, IDS), logits(by_hand(tiny_model_dir, [], plain), IDS))


def test_several_adapters_all_but_the_last_are_merged(tiny_model_dir: Path, ours: Path, plain: Path) -> None:
    first = ours / "checkpoint-000002"
    cfg = pin_sources(job(tiny_model_dir, f"adapter.init_from={first},{plain}"))
    assert merged_adapters(cfg.adapter) == [str(first)]
    core, _ = build_training(cfg, 10, CPU)
    reference = by_hand(tiny_model_dir, [first], plain)
    assert torch.allclose(logits(core.model.eval(), IDS), logits(reference, IDS), atol=1e-6)
    assert all(torch.equal(adapter_weights(core.model)[k], v) for k, v in saved_weights(plain).items())

    fresh = pin_sources(job(tiny_model_dir, f"adapter.init_from={first},{plain}", "adapter.new_adapter=true"))
    core, _ = build_training(fresh, 10, CPU)
    assert merged_adapters(fresh.adapter) == [str(first), str(plain)]
    assert all(not v.any() for k, v in adapter_weights(core.model).items() if "lora_B" in k), "a new adapter"
    merged_all = by_hand(tiny_model_dir, [first], plain).merge_and_unload()
    assert torch.allclose(logits(core.model.eval(), IDS), logits(merged_all, IDS), atol=1e-6)


@pytest.fixture(scope="module")
def trained(
    tiny_model_dir: Path, ours: Path, plain: Path, identity_batch: Any, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A checkpoint trained two steps from init_from [our checkpoint, the plain folder]."""
    first = ours / "checkpoint-000002"
    cfg = pin_sources(job(tiny_model_dir, f"adapter.init_from={first},{plain}", "train.run_name=continued"))
    core, tokenizer = build_training(cfg, 10, CPU)
    for offset in (0, 4):
        core.step([identity_batch(4, offset)])
    folder = tmp_path_factory.mktemp("continued") / "checkpoint-000002"
    save_checkpoint(folder, core, tokenizer, cfg, TrainState(global_step=2))
    return folder


def test_a_checkpoint_trained_from_init_from_loads_as_rebuilt_by_hand(
    trained: Path, tiny_model_dir: Path, ours: Path
) -> None:
    from raytune_ft.evaluate.scorers import EvalModel
    from raytune_ft.export import merge_checkpoint

    reference = logits(by_hand(tiny_model_dir, [ours / "checkpoint-000002"], trained), IDS)
    model, tokenizer = load_for_inference(None, trained)
    assert torch.equal(logits(model, IDS), reference)
    assert tokenizer.chat_template
    assert torch.allclose(logits(merge_checkpoint(trained).model, IDS), reference, atol=1e-5)
    assert torch.equal(logits(EvalModel(None, str(trained)).load()[0], IDS), reference)


def test_serving_takes_one_adapter_and_points_a_merged_base_to_export(
    trained: Path, tiny_model_dir: Path, ours: Path, plain: Path
) -> None:
    from raytune_ft.serve import plan_serving

    plan = plan_serving(job(tiny_model_dir, f"adapter.init_from={plain}"))
    assert plan.catalog.model_ids() == [f"{plan.model_id}:mlp-adapter", f"{plan.model_id}:mlp-adapter:0"]
    assert plan.max_lora_rank == 16
    plan = plan_serving(job(tiny_model_dir, f"adapter.init_from={ours}"))
    assert plan.catalog.names() == ["sft-run"]
    with pytest.raises(InputError, match=r"lists 2 adapters.*raytune-ft export"):
        plan_serving(job(tiny_model_dir, f"adapter.init_from={ours},{plain}"))
    with pytest.raises(InputError, match=rf"merged into it.*raytune-ft export --checkpoint {trained}"):
        plan_serving(job(tiny_model_dir), str(trained))


def test_export_and_eval_take_init_from_from_a_config(
    tiny_model_dir: Path, ours: Path, plain: Path, tmp_path: Path
) -> None:
    from raytune_ft.evaluate import eval_target
    from raytune_ft.export import export_init_from

    first = ours / "checkpoint-000002"
    cfg = job(tiny_model_dir, f"adapter.init_from={first},{plain}")
    reference = logits(by_hand(tiny_model_dir, [first], plain), IDS)
    out = export_init_from(cfg, tmp_path / "merged", log=lambda _: None)
    manifest = json.loads((out / "raytune_ft_export.json").read_text())
    assert manifest["init_from_merged"] == [str(first)] and manifest["step"] is None
    model, _ = load_for_inference(str(out))
    assert torch.allclose(logits(model, IDS), reference, atol=1e-5)
    target = eval_target(None, None, cfg)
    assert target.adapter == str(plain) and target.tokenizer.source == str(tiny_model_dir.resolve())
    assert tokenizer_folder(plain, target.tokenizer) == tiny_model_dir.resolve()  # the last adapter has no tokenizer
    assert torch.equal(logits(target.model.load()[0], IDS), reference)


def test_an_adapters_own_tokenizer_wins_in_every_loader(tiny_model_dir: Path, plain: Path, tmp_path: Path) -> None:
    """A tokenizer.json alone (no tokenizer_config.json) is the adapter's tokenizer too."""
    from raytune_ft.config import ModelConfig

    own = tmp_path / "own-tokenizer"
    shutil.copytree(plain, own)
    shutil.copy(tiny_model_dir / "tokenizer.json", own)
    assert tokenizer_folder(own, tiny_model_dir) == own and tokenizer_folder(None, tiny_model_dir) == tiny_model_dir
    assert tokenizer_folder(plain, ModelConfig(source=str(tiny_model_dir))) == tiny_model_dir.resolve()


def test_what_init_from_accepts_and_refuses(tiny_model_dir: Path, ours: Path, tmp_path: Path) -> None:
    assert adapter_folder(ours) == ours / "checkpoint-000004"
    with pytest.raises(ModelSourceError, match="no such folder, and not a Hub id"):
        adapter_folder(tmp_path / "missing")
    with pytest.raises(ModelSourceError, match=r"no adapter_config\.json there"):
        adapter_folder(tiny_model_dir)
    for bad, message in [
        (["adapter.type=full"], "needs type lora"),
        (["adapter.pissa_init=true"], "choose one"),
        (["scaling.use_gpu=true", "model.quantization_bit=4"], "not supported: merge the adapters"),
    ]:
        with pytest.raises(ConfigError, match=message):
            job(tiny_model_dir, f"adapter.init_from={ours}", *bad)
    with pytest.raises(ConfigError, match="set init_from"):
        job(tiny_model_dir, "adapter.new_adapter=true")


def test_a_hub_adapter_is_pinned_and_read_from_the_models_cache(
    tiny_model_dir: Path, plain: Path, tmp_path: Path
) -> None:
    snapshot = hf_cache_entry(tmp_path / "hf", "someone/mlp-adapter", plain)
    cfg = pin_sources(
        job(tiny_model_dir, "adapter.init_from=someone/mlp-adapter", f"model.cache_dir={tmp_path / 'hf'}")
    )
    assert cfg.adapter.init_from == [f"someone/mlp-adapter@{snapshot.name}"]
    # The driver pins every Hub adapter but fetches only the continued one, whose settings it reads: the merged
    # ones are fetched by the workers, on their nodes (here the driver's cache has none of the first's files).
    merged = hf_cache_entry(tmp_path / "hf", "someone/merged", plain)
    shutil.rmtree(merged.parent)
    two = pin_sources(
        job(
            tiny_model_dir, "adapter.init_from=someone/merged,someone/mlp-adapter", f"model.cache_dir={tmp_path / 'hf'}"
        )
    )
    assert two.adapter.init_from == [f"someone/merged@{merged.name}", f"someone/mlp-adapter@{snapshot.name}"]
    assert two.adapter.rank == 4  # the continued adapter's own
    assert adapter_folder(cfg.adapter.init_from[0], cfg.model.cache_dir) == snapshot
    model, _ = load_for_inference(None, config=cfg)
    assert torch.equal(logits(model, IDS), logits(by_hand(tiny_model_dir, [], plain), IDS))
