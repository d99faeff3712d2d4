"""LLaMA-Factory's own text recipes run here as a LLaMA-Factory user brings them.

Each YAML in tests/fixtures/llamafactory/examples matches LLaMA-Factory's example key for key, and its
``data/`` folder mirrors LLaMA-Factory's demo datasets (our rows, their formats). The tests copy that
folder, work inside the copy as a LLaMA-Factory checkout, and change only the model path and a step cap:
the LoRA recipes train (sft, dpo, kto, pt, rm, DeepSpeed ZeRO-3, full, PiSSA, and the Ray recipe with a
REMOTE: dataset folder from the Hugging Face cache), and the inference, merge and predict YAMLs chat with,
merge and evaluate what the training recipes wrote.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from raytune_ft.cli import main
from raytune_ft.models import latest_checkpoint

pytestmark = pytest.mark.integration

FIXTURES = Path(__file__).parents[1] / "fixtures" / "llamafactory"
LLAMA3_TOKENS = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|eom_id|>"]
CAP = "train.max_steps=2"
SMOLLM2 = "HuggingFaceTB/SmolLM2-135M-Instruct"


@pytest.fixture(scope="module")
def checkout(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A copy of the fixture folder as the working directory, as a LLaMA-Factory checkout would be."""
    folder = tmp_path_factory.mktemp("llamafactory")
    shutil.copytree(FIXTURES, folder, dirs_exist_ok=True)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        yield folder


def _tiny(folder: Path, tokenizer: Any, family: str) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM

    classes = {"qwen3": (Qwen3Config, Qwen3ForCausalLM), "llama": (LlamaConfig, LlamaForCausalLM)}
    config_class, model_class = classes[family]
    config = config_class(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, max_position_embeddings=4096, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    model_class(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_qwen3(tmp_path_factory: pytest.TempPathFactory, builtin_dir: Path) -> Path:
    """A 2-layer Qwen3 with the builtin tokenizer, whose <|im_start|>/<|im_end|> the qwen3 templates use."""
    from transformers import AutoTokenizer

    return _tiny(tmp_path_factory.mktemp("tiny-qwen3"), AutoTokenizer.from_pretrained(builtin_dir), "qwen3")


@pytest.fixture(scope="module")
def tiny_llama3(tmp_path_factory: pytest.TempPathFactory, builtin_dir: Path) -> Path:
    """A 2-layer llama whose tokenizer has Llama 3's header and end-of-turn tokens, as Llama 3 models do."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(builtin_dir)
    tokenizer.add_special_tokens({"bos_token": LLAMA3_TOKENS[0], "additional_special_tokens": LLAMA3_TOKENS[1:]})
    return _tiny(tmp_path_factory.mktemp("tiny-llama3"), tokenizer, "llama")


def run(*argv: str) -> None:
    assert main(list(argv)) == 0, argv


def metrics(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def trained(run_dir: Path) -> Path:
    """The newest checkpoint of a finished 2-step run, after checking every logged loss is finite."""
    log = metrics(run_dir)
    assert log and log[-1]["step"] == 2 and all(torch.isfinite(torch.tensor(r["loss"])) for r in log), log
    return latest_checkpoint(run_dir)


@pytest.mark.parametrize(
    "recipe, out",
    [("train_lora/qwen3_lora_dpo.yaml", "saves/qwen3-4b/lora/dpo"),
     ("train_lora/qwen3_lora_kto.yaml", "saves/qwen3-4b/lora/kto"),
     ("train_lora/qwen3_lora_pretrain.yaml", "saves/qwen3-4b/lora/pretrain"),
     ("train_lora/qwen3_lora_reward.yaml", "saves/qwen3-4b/lora/reward")],
    ids=["dpo", "kto", "pretrain", "reward"],
)  # fmt: skip
def test_lora_recipes_train(local_ray: None, checkout: Path, tiny_qwen3: Path, recipe: str, out: str) -> None:
    run("train", f"examples/{recipe}", f"model.source={tiny_qwen3}", CAP)
    trained(checkout / out)


@pytest.fixture(scope="module")
def smollm2_hub_cache(tmp_path_factory: pytest.TempPathFactory, builtin_dir: Path) -> Path:
    """An offline Hugging Face cache holding HuggingFaceTB/SmolLM2-135M-Instruct, laid out as huggingface_hub
    lays out a download (seeded from the builtin model, the same weights)."""
    from tests.hub_cache import hf_cache_entry

    cache = tmp_path_factory.mktemp("hf-hub")
    hf_cache_entry(cache, SMOLLM2, builtin_dir)
    return cache


def test_lora_sft_on_a_hub_model_then_chat_and_merge(
    local_ray: None, checkout: Path, smollm2_hub_cache: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    # model_name_or_path: HuggingFaceTB/SmolLM2-135M-Instruct, from a Hugging Face cache with the hub offline
    # (named by cache_dir, LLaMA-Factory's key, so the module's already started workers read it too).
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model, cache = f"model.source={SMOLLM2}", f"model.cache_dir={smollm2_hub_cache}"
    run("train", "examples/train_lora/qwen3_lora_sft.yaml", model, cache, "train.max_steps=1",
        "train.logging_steps=1")  # fmt: skip
    log = metrics(checkout / "saves/qwen3-4b/lora/sft")
    assert log[-1]["step"] == 1 and 0 < log[-1]["loss"] < 20, log
    checkpoint = latest_checkpoint(checkout / "saves/qwen3-4b/lora/sft")
    saved = (checkpoint / "raytune_ft.yaml").read_text()
    assert f"source: {SMOLLM2}@" in saved  # pinned to the cached commit, so every later load reads the same weights
    capsys.readouterr()

    # The inference YAML names the adapter by its output_dir: the reply is the trained model's.
    run("chat", "examples/inference/qwen3_lora_sft.yaml", model, cache, "--prompt", "Who are you?",
        "--max-new-tokens", "12")  # fmt: skip
    reply = capsys.readouterr().out.strip()
    base = next((smollm2_hub_cache / "models--HuggingFaceTB--SmolLM2-135M-Instruct" / "snapshots").iterdir())
    expected = _greedy_reply(base, checkpoint, "Who are you?", 12)
    assert reply and reply == expected

    # The merge YAML writes a standalone model that answers as base + adapter did.
    run("export", "examples/merge_lora/qwen3_lora_sft.yaml", model, cache)
    merged = checkout / "saves/qwen3_sft_merged"
    assert any(merged.glob("*.safetensors")) and (merged / "tokenizer.json").is_file()
    capsys.readouterr()
    run("chat", "--model", str(merged), "--prompt", "Who are you?", "--max-new-tokens", "12")
    assert capsys.readouterr().out.strip() == expected


def _greedy_reply(base: Path, adapter: Path, prompt: str, tokens: int) -> str:
    """What base + adapter answer, loaded by hand with peft and the tokenizer saved with the checkpoint."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(adapter)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), adapter).eval()
    inputs = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=tokens, do_sample=False)
    return str(tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)).strip()


@pytest.mark.parametrize(
    "recipe, out",
    [("train_lora/qwen3_lora_sft_ds3.yaml", "saves/qwen3-4b/lora/sft-ds3"),
     ("train_full/qwen3_full_sft.yaml", "saves/qwen3-4b/full/sft")],
    ids=["lora-zero3", "full-zero3"],
)  # fmt: skip
def test_deepspeed_recipes_train(local_ray: None, checkout: Path, tiny_qwen3: Path, recipe: str, out: str) -> None:
    # The LoRA ZeRO-3 recipe shares its output_dir with the plain LoRA one; a second run of another strategy
    # there is refused (it would mix checkpoints), so this one writes beside it.
    where = [f"train.run_name={Path(out).name}"] if "ds3" in recipe else []
    run("train", f"examples/{recipe}", f"model.source={tiny_qwen3}", CAP, *where)
    trained(checkout / out)


def test_ray_recipe_reads_a_remote_dataset_dir_from_the_hub_cache(
    local_ray: None, checkout: Path, tiny_qwen3: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.hub_cache import dataset_cache

    cache = tmp_path / "hub"
    dataset_cache(cache, "llamafactory/demo_data", checkout / "data")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    run("train", "examples/train_lora/qwen3_lora_sft_ray.yaml", f"model.source={tiny_qwen3}", CAP)
    trained(checkout / "tmp_dir")


def test_pissa_recipe_then_predict(local_ray: None, checkout: Path, tiny_llama3: Path) -> None:
    run("train", "examples/extras/pissa/llama3_lora_sft.yaml", f"model.source={tiny_llama3}", CAP)
    trained(checkout / "saves/llama3-8b/lora/sft")
    run("eval", "examples/extras/nlg_eval/llama3_lora_predict.yaml", f"model.source={tiny_llama3}",
        "eval.max_new_tokens=8")  # fmt: skip
    out = checkout / "saves/llama3-8b/lora/predict"
    rows = [json.loads(line) for line in (out / "generated_predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 24 + 48 and all({"prompt", "predict", "label"} <= set(row) for row in rows)
    # Prompts are rendered with the llama3 template the file names, as the model saw them.
    assert rows[0]["prompt"].startswith("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n")
    assert rows[0]["prompt"].endswith("<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")
    results = json.loads((out / "eval_results.json").read_text())["results"]["generation"]
    assert {"bleu-4", "rouge-1", "rouge-2", "rouge-l"} <= set(results), results
