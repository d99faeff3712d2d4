"""Every post-training stage trains end to end on the tiny model with 2 workers on a local Ray:
PT loss falls on raw text, RM accuracy rises (and the saved reward model scores text), DPO's margin
widens with the adapter-off reference and with reference log-probs precomputed by a Ray Data pass,
and KTO's loss falls. Each preference loss is held to the same in tests/unit/test_stages.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from raytune_ft.config import load_config
from raytune_ft.data import BUILTIN_DATASETS
from raytune_ft.data.builtin.make_preference import EVASIVE
from raytune_ft.models import VALUE_HEAD_WEIGHTS, RewardScorer, latest_checkpoint
from raytune_ft.train import run_training

pytestmark = pytest.mark.integration

PAIRS = BUILTIN_DATASETS["pref_300"]


def train(model_dir: Path, tmp_path: Path, name: str, *overrides: str) -> list[dict[str, float]]:
    cfg = load_config(None, [
        f"model.source={model_dir}", "data.cutoff_len=128", "scaling.num_workers=2", "train.per_device_batch_size=4",
        "train.lr_scheduler=constant", "adapter.rank=16", "train.logging_steps=1", "train.max_steps=8",
        "train.save_steps=8", f"train.storage_path={tmp_path}", f"train.run_name={name}", *overrides,
    ])  # fmt: skip
    outcome = run_training(cfg)
    return [json.loads(line) for line in (Path(outcome.run_dir) / "metrics.jsonl").read_text().splitlines()]


def mean(records: list[dict[str, float]], key: str) -> float:
    return sum(r[key] for r in records) / len(records)


def test_pretraining_loss_falls_on_raw_text(local_ray: None, tiny_model_dir: Path, tmp_path: Path) -> None:
    log = train(tiny_model_dir, tmp_path, "pt", "method.stage=pt", "data.dataset=text_300", "train.learning_rate=1e-2")
    assert [r["step"] for r in log] == list(range(1, 9))
    assert mean(log[-3:], "loss") < mean(log[:3], "loss") - 0.1, [r["loss"] for r in log]  # new rows each step


def test_reward_model_ranks_pairs_and_scores_text(local_ray: None, tiny_model_dir: Path, tmp_path: Path) -> None:
    # The separable half of pref_300: right answers against evasive ones (a random tiny model cannot
    # tell an off-topic answer from a right one, but it can learn what an evasion looks like).
    lines = PAIRS.read_text().splitlines()
    separable = tmp_path / "separable.jsonl"
    separable.write_text("".join(line + "\n" for line in lines if json.loads(line)["rejected"] in EVASIVE))
    log = train(tiny_model_dir, tmp_path, "rm", "method.stage=rm", f"data.dataset={separable}",
                "train.learning_rate=3e-3", "data.val_size=32", "train.max_steps=16", "train.save_steps=16",
                "train.eval_steps=4")  # fmt: skip
    # A random head ranks an easy set all right or all wrong by chance (it did both), so accuracy is
    # judged at the end and the rise is read from the margin, which starts near zero.
    evals = [r for r in log if "eval_rewards/accuracies" in r]
    assert evals[-1]["eval_rewards/accuracies"] >= 0.9, evals
    assert evals[-1]["eval_rewards/margins"] > abs(log[0]["rewards/margins"]) + 1.0, (log[0], evals)
    assert "eval_loss" in log[-1] and "eval_perplexity" not in log[-1]  # exp(pairwise loss) means nothing
    assert mean(log[-4:], "loss") < mean(log[:4], "loss"), [r["loss"] for r in log]
    checkpoint = latest_checkpoint(tmp_path / "rm")
    assert (checkpoint / VALUE_HEAD_WEIGHTS).is_file()

    rows = [json.loads(line) for line in separable.read_text().splitlines()[:8]]
    scorer = RewardScorer.load(tmp_path / "rm")
    prompt = [[{"role": "user", "content": r["instruction"] + ("\n" + r["input"] if r["input"] else "")}] for r in rows]
    chosen, rejected = (
        scorer.score([[*p, {"role": "assistant", "content": r[side]}] for p, r in zip(prompt, rows, strict=True)])
        for side in ("chosen", "rejected")
    )
    assert sum(c > r for c, r in zip(chosen, rejected, strict=True)) >= 7, (chosen, rejected)


@pytest.mark.parametrize(
    "overrides",
    [["adapter.type=lora", "train.learning_rate=1e-2"],
     ["adapter.type=full", "method.reference=precomputed", "train.learning_rate=1e-3"]],
    ids=["lora-adapter-off-reference", "full-precomputed-reference"],
)  # fmt: skip
def test_dpo_widens_the_margin(local_ray: None, tiny_model_dir: Path, tmp_path: Path, overrides: list[str]) -> None:
    """The two ways to a reference on 2 workers; the other preference losses (ipo, hinge, simpo, orpo) read the
    same rows and reference and widen the margin in tests/unit/test_stages.py."""
    log = train(tiny_model_dir, tmp_path, "dpo", "method.stage=dpo", "method.loss=sigmoid", "data.dataset=pref_300",
                *overrides)  # fmt: skip
    margins = [r["rewards/margins"] for r in log]
    assert margins[0] == pytest.approx(0.0, abs=1e-3), "the policy starts as its reference"
    assert mean(log[-3:], "rewards/margins") > mean(log[:3], "rewards/margins") + 0.01, margins
    assert {"rewards/chosen", "rewards/rejected", "rewards/accuracies", "logps/chosen"} <= set(log[-1])


def test_kto_loss_falls(local_ray: None, tiny_model_dir: Path, tmp_path: Path) -> None:
    log = train(tiny_model_dir, tmp_path, "kto", "method.stage=kto", "data.dataset=kto_300", "train.learning_rate=1e-2")
    assert log[0]["loss"] == pytest.approx(0.5, abs=1e-3)  # 1 - sigma(0): the policy starts as its reference
    assert mean(log[-3:], "loss") < 0.5 - 0.01, [r["loss"] for r in log]
    assert "kl" in log[-1]
