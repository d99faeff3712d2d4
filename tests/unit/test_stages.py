"""Preference, KTO and reward-model stages without Ray: rows are tokenized into the sequences each
stage scores, the reference is the base model (adapters off, or a frozen copy), and training moves
what it should: margins widen, KTO loss falls, reward accuracy rises."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from raytune_ft.config import ConfigError, JobConfig, load_config
from raytune_ft.data import BUILTIN_DATASETS, IGNORE_INDEX, SCORED_SEQUENCES, EncodeOptions, pad_scored
from raytune_ft.data.pipeline import TokenizeRows
from raytune_ft.models import VALUE_HEAD_WEIGHTS
from raytune_ft.train import TrainState, build_training, save_checkpoint

CPU = torch.device("cpu")


def records(name: str, n: int) -> dict[str, np.ndarray]:
    lines = BUILTIN_DATASETS[name].read_text().splitlines()[:n]
    path = str(BUILTIN_DATASETS[name])
    return {"path": np.array([path] * n), "row": np.arange(1, n + 1), "record": np.array(lines, dtype=object)}


def tokenized(tokenizer: Any, name: str, rows: str, n: int) -> dict[str, Any]:
    return TokenizeRows(lambda: tokenizer, EncodeOptions(cutoff_len=256, stage=rows), [])(records(name, n))


def job(model_dir: Path, *overrides: str) -> JobConfig:
    return load_config(None, [f"model.source={model_dir}", "train.seed=0", "train.lr_scheduler=constant", *overrides])


def answer(tokenizer: Any, ids: np.ndarray, labels: np.ndarray) -> str:
    return str(tokenizer.decode([t for t, lab in zip(ids, labels, strict=True) if lab != IGNORE_INDEX]))


def test_pairs_hold_prompt_with_chosen_and_with_rejected(tokenizer: Any) -> None:
    out = tokenized(tokenizer, "pref_300", "preference", 4)
    rows = [json.loads(line) for line in BUILTIN_DATASETS["pref_300"].read_text().splitlines()[:4]]
    assert len(out["input_ids"]) == len(out["rejected_input_ids"]) == 4
    for i, row in enumerate(rows):
        chosen = answer(tokenizer, out["input_ids"][i], out["labels"][i])
        rejected = answer(tokenizer, out["rejected_input_ids"][i], out["rejected_labels"][i])
        assert chosen.startswith(row["chosen"]) and rejected.startswith(row["rejected"])
        prompt = int(np.argmax(out["labels"][i] != IGNORE_INDEX))
        assert prompt > 0 and np.array_equal(out["input_ids"][i][:prompt], out["rejected_input_ids"][i][:prompt])


def test_preview_fits_scored_rows_like_conversations() -> None:
    """``data preview`` describes a pair or KTO row by its first sequence, truncated as SFT is."""
    from raytune_ft.data.pipeline import fit_to_cutoff

    ids, labels = list(range(10)), [IGNORE_INDEX] * 4 + list(range(4, 10))
    for rows in ("preference", "kto"):
        assert fit_to_cutoff(rows, ids, labels, 6) == fit_to_cutoff("sft", ids, labels, 6) == [(ids[:6], labels[:6])]


def test_kto_rows_pair_each_prompt_with_the_next_rows_answer(tokenizer: Any) -> None:
    out = tokenized(tokenizer, "kto_300", "kto", 5)
    rows = [json.loads(line) for line in BUILTIN_DATASETS["kto_300"].read_text().splitlines()[:5]]
    assert out["kto_label"].tolist() == [r["label"] for r in rows]
    for i in range(5):
        assert answer(tokenizer, out["input_ids"][i], out["labels"][i]).startswith(rows[i]["output"])
        mismatched = answer(tokenizer, out["kl_input_ids"][i], out["kl_labels"][i])
        assert mismatched.startswith(rows[(i + 1) % 5]["output"]), "KL rows: prompt i with the answer of row i+1"


def test_scored_batches_stack_first_then_second_sequences(tokenizer: Any) -> None:
    out = tokenized(tokenizer, "kto_300", "kto", 3)
    out["ref_logps"], out["kl_ref_logps"] = np.array([-1.0, -2.0, -3.0]), np.array([-4.0, -5.0, -6.0])
    batch = pad_scored(out, tokenizer.pad_token_id, SCORED_SEQUENCES["kto"])
    assert batch["input_ids"].shape[0] == 6
    assert batch["ref_logps"].tolist() == [-1.0, -2.0, -3.0, -4.0, -5.0, -6.0]
    assert batch["kto_label"].tolist() == out["kto_label"].tolist()
    n = len(out["kl_input_ids"][1])
    assert batch["input_ids"][4, :n].tolist() == out["kl_input_ids"][1].tolist()


def pairs(tokenizer: Any, n: int = 4) -> dict[str, torch.Tensor]:
    return pad_scored(tokenized(tokenizer, "pref_300", "preference", n), tokenizer.pad_token_id, ("", "rejected_"))


@pytest.mark.parametrize(
    ("loss", "adapter"),
    [("sigmoid", "lora"), ("ipo", "lora"), ("hinge", "full"), ("simpo", "lora"), ("orpo", "lora")],
)
def test_preference_training_widens_the_margin(tiny_model_dir: Path, tokenizer: Any, loss: str, adapter: str) -> None:
    lr = "1e-3" if adapter == "full" else "1e-2"
    # SimPO's paper uses beta 2-2.5, and ORPO's odds term needs a lambda near 1 to move the margin in 8 steps.
    beta = {"simpo": "2.0", "orpo": "1.0"}.get(loss, "0.1")
    cfg = job(tiny_model_dir, "method.stage=dpo", f"method.loss={loss}", f"adapter.type={adapter}",
              "adapter.rank=16", f"train.learning_rate={lr}", f"method.beta={beta}")  # fmt: skip
    torch.manual_seed(0)  # the adapter's initialisation must not depend on the tests run before
    core, _ = build_training(cfg, 20, CPU)
    batch = pairs(tokenizer)
    stats = [core.step([batch]) for _ in range(8)]
    margins = [s.metrics["rewards/margins"][0] / s.metrics["rewards/margins"][1] for s in stats]
    if cfg.method.needs_reference:  # the policy starts as the reference: no margin, sigmoid loss ln 2
        assert margins[0] == pytest.approx(0.0, abs=1e-4)
        if loss == "sigmoid":
            assert stats[0].loss_sum / stats[0].terms == pytest.approx(np.log(2), abs=1e-4)
    assert margins[-1] > margins[0] + 0.02, margins
    accuracy = stats[-1].metrics["rewards/accuracies"]
    assert accuracy[0] / accuracy[1] == 1.0


def test_full_tuning_reference_is_a_frozen_copy(tiny_model_dir: Path, tokenizer: Any) -> None:
    core, _ = build_training(job(tiny_model_dir, "method.stage=dpo", "adapter.type=full"), 10, CPU)
    reference = core.objective.reference.model  # type: ignore[attr-defined]
    before = {n: p.detach().clone() for n, p in reference.named_parameters()}
    batch = pairs(tokenizer)
    ref_before = core.objective.reference.logps(batch)  # type: ignore[attr-defined]
    for _ in range(3):
        core.step([batch])
    assert all(torch.equal(before[n], p) for n, p in reference.named_parameters())
    assert torch.equal(core.objective.reference.logps(batch), ref_before)  # type: ignore[attr-defined]


def test_ftx_adds_the_chosen_nll(tiny_model_dir: Path, tokenizer: Any) -> None:
    batch = pairs(tokenizer)
    plain, _ = build_training(job(tiny_model_dir, "method.stage=dpo"), 10, CPU)
    mixed, _ = build_training(job(tiny_model_dir, "method.stage=dpo", "method.ftx=0.5"), 10, CPU)
    with torch.no_grad():
        base, with_ftx = plain.objective.loss_sum(plain.model, batch), mixed.objective.loss_sum(mixed.model, batch)
    from raytune_ft.train.reference import sequence_logps

    with torch.no_grad():
        logps, counts = sequence_logps(plain.model, batch)
    chosen_nll = -(logps / counts)[:4].sum()
    assert with_ftx.item() == pytest.approx(base.item() + 0.5 * chosen_nll.item(), rel=1e-5)


def test_kto_loss_falls_and_reports_kl(tiny_model_dir: Path, tokenizer: Any) -> None:
    cfg = job(tiny_model_dir, "method.stage=kto", "adapter.rank=16", "train.learning_rate=1e-2")
    core, _ = build_training(cfg, 20, CPU)
    batch = pad_scored(tokenized(tokenizer, "kto_300", "kto", 6), tokenizer.pad_token_id, ("", "kl_"))
    stats = [core.step([batch]) for _ in range(8)]
    losses = [s.loss_sum / s.terms for s in stats]
    assert losses[0] == pytest.approx(0.5, abs=1e-4)  # policy == reference: 1 - sigma(0) for every row
    assert losses[-1] < losses[0] - 0.01, losses
    assert set(stats[0].metrics) == {"rewards/chosen", "rewards/rejected", "kl"}
    chosen, rejected = stats[-1].metrics["rewards/chosen"], stats[-1].metrics["rewards/rejected"]
    assert chosen[0] / chosen[1] > rejected[0] / rejected[1]


def test_reward_model_learns_to_rank_and_saves_its_head(tiny_model_dir: Path, tokenizer: Any, tmp_path: Path) -> None:
    cfg = job(tiny_model_dir, "method.stage=rm", "adapter.rank=16", "train.learning_rate=1e-2")
    core, tok = build_training(cfg, 30, CPU)
    batch = pairs(tokenizer, 8)
    stats = [core.step([batch]) for _ in range(12)]
    accuracy = [s.metrics["rewards/accuracies"][0] / s.metrics["rewards/accuracies"][1] for s in stats]
    assert accuracy[-1] == 1.0 and stats[-1].loss_sum < stats[0].loss_sum, accuracy
    trainable = {n.split(".")[0] for n, p in core.model.named_parameters() if p.requires_grad}
    assert trainable == {"lm", "value_head"}
    save_checkpoint(tmp_path, core, tok, cfg, TrainState(global_step=12))
    assert (tmp_path / VALUE_HEAD_WEIGHTS).is_file() and (tmp_path / "adapter_model.safetensors").is_file()

    resumed, _ = build_training(cfg, 30, CPU, checkpoint=tmp_path)
    with torch.no_grad():
        assert torch.allclose(resumed.model(batch["input_ids"], batch["attention_mask"]),
                              core.model(batch["input_ids"], batch["attention_mask"]), atol=1e-5)  # fmt: skip


@pytest.mark.parametrize(
    ("overrides", "problem"),
    [
        (["method.stage=dpo", "data.packing=true"], "data.packing does not apply"),
        (["method.stage=kto", "adapter.pissa_init=true"], "reference: precomputed"),
        (["method.stage=dpo", "method.loss=kto_pair"], "method.loss"),
    ],
)
def test_stage_settings_that_cannot_work_are_refused(overrides: list[str], problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        load_config(None, overrides)


def test_llamafactory_preference_keys_map(tmp_path: Path) -> None:
    path = tmp_path / "lf.yaml"
    path.write_text(
        "model_name_or_path: x\nstage: dpo\npref_beta: 0.2\npref_loss: simpo\npref_ftx: 0.1\nsimpo_gamma: 0.7\n"
        "dpo_label_smoothing: 0.1\nkto_chosen_weight: 1.5\nkto_rejected_weight: 0.5\n"
    )
    method = load_config(path).method
    assert (method.stage, method.beta, method.loss, method.ftx, method.simpo_gamma) == ("dpo", 0.2, "simpo", 0.1, 0.7)
    assert (method.label_smoothing, method.kto_desirable_weight, method.kto_undesirable_weight) == (0.1, 1.5, 0.5)
