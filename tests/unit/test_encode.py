"""Label masking, checked token by token against the SmolLM2 chat template."""

from __future__ import annotations

from typing import Any

from raytune_ft.data import IGNORE_INDEX, encode_batch, render_segments

SYSTEM = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
HI = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
TWO_TURNS = [
    {"role": "user", "content": "2+2?"},
    {"role": "assistant", "content": "4"},
    {"role": "user", "content": "And 3+3?"},
    {"role": "assistant", "content": "6"},
]


def learned_text(tokenizer: Any, ids: list[int], labels: list[int]) -> str:
    return str(tokenizer.decode([i for i, label in zip(ids, labels, strict=True) if label != IGNORE_INDEX]))


def test_single_turn_segments_follow_the_template(tokenizer: Any) -> None:
    segments = render_segments(tokenizer, HI, train_on_prompt=False)
    assert segments == [
        (SYSTEM + "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n", False),
        ("Hello!<|im_end|>\n", True),
    ]


def test_single_turn_labels_hand_checked(tokenizer: Any) -> None:
    [(ids, labels)] = encode_batch(tokenizer, [render_segments(tokenizer, HI, False)], cutoff_len=1024)
    # "Hello" "!" "<|im_end|>" "\n": the answer and its end-of-turn token are learned, nothing else.
    answer = [19556, 17, 2, 198]
    assert ids[-4:] == answer
    assert labels == [IGNORE_INDEX] * (len(ids) - 4) + answer
    assert ids[:3] == [1, 9690, 198]  # "<|im_start|>" "system" "\n"
    assert tokenizer.decode(ids) == SYSTEM + "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n"


def test_multi_turn_learns_every_answer_and_masks_every_prompt(tokenizer: Any) -> None:
    messages = [{"role": "system", "content": "Be brief."}, *TWO_TURNS]
    [(ids, labels)] = encode_batch(tokenizer, [render_segments(tokenizer, messages, False)], cutoff_len=1024)
    assert learned_text(tokenizer, ids, labels) == "4<|im_end|>\n6<|im_end|>\n"
    assert "Be brief" not in learned_text(tokenizer, ids, labels)
    assert tokenizer.decode(ids).startswith("<|im_start|>system\nBe brief.<|im_end|>")


def test_mask_history_learns_only_the_last_answer(tokenizer: Any) -> None:
    segments = render_segments(tokenizer, TWO_TURNS, train_on_prompt=False, mask_history=True)
    [(ids, labels)] = encode_batch(tokenizer, [segments], cutoff_len=1024)
    assert learned_text(tokenizer, ids, labels) == "6<|im_end|>\n"
    [(same_ids, _)] = encode_batch(tokenizer, [render_segments(tokenizer, TWO_TURNS, False)], cutoff_len=1024)
    assert ids == same_ids, "masking changes labels only, never the tokens"


def test_train_on_prompt_learns_everything(tokenizer: Any) -> None:
    [(ids, labels)] = encode_batch(tokenizer, [render_segments(tokenizer, HI, True)], cutoff_len=1024)
    assert labels == ids


def test_truncation_keeps_the_start_and_drops_samples_without_answer(tokenizer: Any) -> None:
    segments = render_segments(tokenizer, HI, False)
    [(full_ids, _)] = encode_batch(tokenizer, [segments], cutoff_len=1024)
    cut = len(full_ids) - 2
    [(ids, labels)] = encode_batch(tokenizer, [segments], cutoff_len=cut)
    assert ids == full_ids[:cut]
    assert labels[-2:] == full_ids[cut - 2 : cut]
    assert encode_batch(tokenizer, [segments], cutoff_len=len(full_ids) - 4) == [None]


def test_batch_encoding_matches_one_by_one(tokenizer: Any) -> None:
    other = [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue."}]
    convs = [render_segments(tokenizer, m, False) for m in (HI, other)]
    assert encode_batch(tokenizer, convs, 1024) == [encode_batch(tokenizer, [c], 1024)[0] for c in convs]
