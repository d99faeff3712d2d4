"""Rule-based rewards: what counts as a final answer, numbers compared as numbers, DAPO's overlong
penalty at its bounds, loading by name or import path, and weighted sums that skip missing scores."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from raytune_ft.rl import RewardError, final_answer, load_reward, overlong_penalty, weighted_reward
from raytune_ft.rl.rewards import answer_format, exact_match


@pytest.mark.parametrize(("text", "answer"), [
    ("She has 3 + 4 = 7 apples.\n#### 7", "7"),
    ("so the total is \\boxed{\\frac{3}{4}} and 12 later", "\\frac{3}{4}"),
    ("First 12, then 30, so 42 in all.", "42"),
    ("It costs $1,250.50 in total", "$1,250.50"),
    ("#### 12 #### 13", "12 #### 13"),
    ("no number here", None),
])  # fmt: skip
def test_final_answer(text: str, answer: str | None) -> None:
    assert final_answer(text) == answer


@pytest.mark.parametrize(("completion", "truth", "score"), [
    ("#### 1,000", "1000", 1.0),
    ("The answer is 0.750.", "3/4", 1.0),
    ("#### -5 apples", "-5", 1.0),
    ("I get 41, no wait, 43", "42", 0.0),
    ("\\boxed{Paris}", "paris", 1.0),
    ("", "7", 0.0),
])  # fmt: skip
def test_exact_match_compares_numbers_as_numbers(completion: str, truth: str, score: float) -> None:
    assert exact_match(prompts=["q"], completions=[completion], answer=[truth]) == [score]


def test_answer_format_wants_the_marked_answer_last() -> None:
    texts = ["7 apples.\n#### 7", "#### 7\nthat is all", "\\boxed{7}", "7"]
    assert answer_format(completions=texts) == [1.0, 0.0, 1.0, 0.0]


def test_overlong_penalty_at_its_bounds() -> None:
    """0 up to L_max - L_cache, linear to -1 at L_max, -1 beyond (DAPO's soft overlong punishment)."""
    penalty = overlong_penalty(max_length=100, buffer=20)
    lengths = [10, 80, 81, 90, 100, 150]
    assert penalty(completion_lengths=lengths) == [0.0, 0.0, -0.05, -0.5, -1.0, -1.0]
    with pytest.raises(RewardError, match="buffer 0"):
        overlong_penalty(100, 0)


def shout(completions: list[str], **_: Any) -> list[float]:
    """A user's reward, loaded by import path in the test below."""
    return [float(text.isupper()) for text in completions]


def test_rewards_load_by_name_or_import_path() -> None:
    assert load_reward("exact_match") is exact_match
    assert load_reward("tests.unit.test_rewards:shout")(completions=["HI", "hi"]) == [1.0, 0.0]
    assert load_reward("overlong", max_new_tokens=8)(completion_lengths=[6, 8]) == [0.0, -1.0]


@pytest.mark.parametrize(("name", "message"), [
    ("exact_mach", "unknown reward 'exact_mach' (did you mean 'exact_match'?)"),
    ("tests.unit.test_rewards:nothing", "cannot import it"),
    ("no_such_module_xyz:fn", "cannot import it"),
    ("overlong", "needs the generation limit"),
])  # fmt: skip
def test_bad_reward_names_say_what_to_use(name: str, message: str) -> None:
    with pytest.raises(RewardError, match=message.replace("(", r"\(").replace(")", r"\)").replace("?", r"\?")):
        load_reward(name)


def test_weighted_rewards_add_and_skip_missing_scores() -> None:
    def judge(completions: list[str], **_: Any) -> list[float | None]:
        return [None if "?" in text else 0.5 for text in completions]

    def broken(completions: list[str], **_: Any) -> list[float]:
        return [1.0]

    combined = weighted_reward({"exact_match": (exact_match, 1.0), "judge": (judge, 2.0)})
    scores = combined(prompts=["a", "b"], completions=["#### 4", "#### 5?"], answer=["4", "4"])
    assert scores == [2.0, 0.0]
    only_judge = weighted_reward({"judge": (judge, 1.0)})
    assert only_judge(completions=["x?", "y"]) == [None, 0.5]
    with pytest.raises(RewardError, match="gave 1 scores for 2 completions"):
        weighted_reward({"broken": (broken, 1.0)})(completions=["a", "b"])


def test_a_reward_model_scores_an_answer_as_the_conversation_it_ends(tiny_model_dir: Any, tokenizer: Any) -> None:
    """score_answers(prompt rendered up to the generation prompt, answer) equals score() of the whole conversation,
    and the answers are told apart (the turn's closing is added, the prompt not rendered twice)."""
    from transformers import AutoModelForCausalLM

    from raytune_ft.models import RewardScorer, value_head_model

    scorer = RewardScorer(value_head_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir)), tokenizer)
    question = [{"role": "user", "content": "What is 2 + 3?"}]
    prompt = tokenizer.apply_chat_template(question, add_generation_prompt=True, tokenize=False)
    answers = ["It is 5.", "#### 6", "I do not know"]
    whole = scorer.score([[*question, {"role": "assistant", "content": a}] for a in answers])
    assert scorer.score_answers([prompt] * 3, answers) == pytest.approx(whole, abs=1e-5)
    assert len(set(whole)) == 3


def test_a_reward_model_needs_an_rm_checkpoint_and_its_actor() -> None:
    from raytune_ft.models import CheckpointError

    with pytest.raises(CheckpointError, match=r"/no/such/run: no raytune_ft checkpoint here"):
        load_reward("rm:/no/such/run")  # checked without an actor, as the driver does before anything starts
    with pytest.raises(RewardError, match=r"reward 'rm:saves/rm': a reward model is scored by the actor its run"):
        load_reward("rm:saves/rm", actors={})


@pytest.mark.parametrize(("completion", "truth", "score"), [
    ("so x = \\boxed{\\frac{1}{2}}", "0.5", 1.0),
    ("#### 2\\sqrt{2}", "\\sqrt{8}", 1.0),
    ("The answer is \\boxed{\\{2, 1\\}}", "\\{1,2\\}", 1.0),
    ("#### 1,000", "1000", 1.0),
    ("#### x^2 + 1", "1+x^2", 1.0),
    ("#### 25", "24", 0.0),
    ("no answer at all", "24", 0.0),
])  # fmt: skip
def test_math_verify_compares_answers_as_mathematics(completion: str, truth: str, score: float) -> None:
    """Where exact_match compares numbers, math_verify also equates LaTeX, radicals, sets and expressions; it runs
    outside the main thread (a Ray Train worker's loop) because it is called without signal-based timeouts."""
    import threading

    reward = load_reward("math_verify")
    assert reward(completions=[completion], answer=[truth]) == [score]
    found: list[Any] = []
    thread = threading.Thread(target=lambda: found.append(reward(completions=[completion], answer=[truth])))
    thread.start()
    thread.join()
    assert found == [[score]]


@pytest.mark.parametrize(("reply", "grade"), [
    ("8", 0.8), ("I would rate it 7/10.", 0.7), ("10", 1.0), ("Score: 12", 1.0), ("-3", 0.0), ("9.5", 0.95),
    ("On a scale from 0 to 10, I'd give it 7", 0.7), ("4 out of 5", 0.8), ("2 / 4 (step 3 is wrong)", 0.5),
    ("3/0", 0.0), ("excellent", None), ("", None),
])  # fmt: skip
def test_a_judge_reply_grades_by_its_last_fraction_or_number(reply: str, grade: float | None) -> None:
    from raytune_ft.rl.judge import parse_grade

    assert parse_grade(reply, 10.0) == (None if grade is None else pytest.approx(grade))


def test_the_judge_reward_needs_its_endpoint() -> None:
    from raytune_ft.config import JobConfig, JudgeConfig
    from raytune_ft.rl.judge import check_judge

    with pytest.raises(ValueError, match=r"method\.reward names judge but method\.judge\.base_url is not set"):
        JobConfig.model_validate({"method": {"stage": "grpo", "reward": "judge"}})
    with pytest.raises(RewardError, match=r"reward 'judge' needs method\.judge\.base_url"):
        load_reward("judge")
    closed = JudgeConfig(base_url="http://127.0.0.1:9/v1", model="m", timeout_s=2)  # the discard port: nothing listens
    with pytest.raises(RewardError, match=r"judge http://127\.0\.0\.1:9/v1: cannot reach it"):
        check_judge(closed)


@pytest.mark.parametrize("form", ["full", "lora"])
def test_a_reward_model_llamafactory_trained_scores_as_it_did_there(
    tiny_model_dir: Path, tmp_path: Path, form: str
) -> None:
    """LLaMA-Factory saves the LM (whole, or a LoRA adapter naming its base) and the head apart, as TRL names it
    (``v_head.summary.*``, safetensors or .bin): loaded from its output folder, or the run's newest
    ``checkpoint-N``, the scorer gives the scores of the model that was saved."""
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from raytune_ft.models import RewardScorer, reward_model_checkpoint, value_head_model

    torch.manual_seed(0)
    lm = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    if form == "lora":
        lm = get_peft_model(lm, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    trained = value_head_model(lm).eval()
    torch.nn.init.normal_(trained.value_head.weight)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    conversations = [[{"role": "user", "content": "2 + 3?"}, {"role": "assistant", "content": a}] for a in ("5", "6")]
    expected = RewardScorer(trained, tokenizer).score(conversations)

    head = {f"v_head.summary.{k}": v.contiguous() for k, v in trained.value_head.state_dict().items()}
    run = tmp_path / "lf-rm"
    final, step = run, run / "checkpoint-8"  # a finished run keeps its model on top; a stopped one in checkpoints
    for folder, as_bin in ((final, False), (step, True)):
        lm.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        if as_bin:
            torch.save(head, folder / "value_head.bin")
        else:
            save_file(head, str(folder / "value_head.safetensors"))
    if form == "lora":  # LLaMA-Factory's adapter names its base as the user gave it
        assert json.loads((final / "adapter_config.json").read_text())["base_model_name_or_path"] == str(tiny_model_dir)

    assert reward_model_checkpoint(run) == final
    assert RewardScorer.load(run).score(conversations) == pytest.approx(expected, abs=1e-5)
    (final / "value_head.safetensors").unlink()
    assert reward_model_checkpoint(run) == step
    assert RewardScorer.load(run).score(conversations) == pytest.approx(expected, abs=1e-5)
    assert load_reward(f"rm:{run}") is not None  # the driver's check passes
    if form == "lora":
        from raytune_ft.models import CheckpointError

        config = json.loads((step / "adapter_config.json").read_text())
        (step / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": None}))
        with pytest.raises(CheckpointError, match=r"checkpoint-8/adapter_config\.json: names no base model"):
            reward_model_checkpoint(run)
