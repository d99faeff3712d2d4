"""Every named template encodes exactly as LLaMA-Factory 0.9.5 does, token for token and label for label.

The goldens (tests/fixtures/templates, written by make_goldens.py from LLaMA-Factory itself) hold its ids
for every registry name on three tokenizers: a byte-level BPE and a SentencePiece-style one built for the
fixtures, and the builtin SmolLM2 tokenizer. Each case is checked through the transformers tokenizer and
through RowTokenizer (what the data workers load): supervised samples (train_on_prompt, mask_history,
thinking on/off/None, tool formats, default system overrides), one-turn samples (pairs and KTO) and the
inference prompt, whose text our installed Jinja template must render.
"""

from __future__ import annotations

import contextlib
import copy
import gzip
import json
from collections import defaultdict
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from raytune_ft.data import IGNORE_INDEX, encode_full, tool_formats
from raytune_ft.data.chat_formats import Token
from raytune_ft.data.sources import DataError
from raytune_ft.data.templates import (
    TEMPLATE_NAMES,
    TEMPLATES,
    TemplateOptions,
    apply_template,
    prompt_answer_segments,
    template_segments,
)
from raytune_ft.models import load_tokenizer
from raytune_ft.models.fast_tokenizer import RowTokenizer

FIXTURES = Path(__file__).parents[1] / "fixtures" / "templates"
REGISTRY = json.loads((FIXTURES / "registry.json").read_text(encoding="utf-8"))
CONVERSATIONS = {c["id"]: c for c in json.loads((FIXTURES / "conversations.json").read_text(encoding="utf-8"))}
TOKENIZERS = ("bpe", "spm", "smollm2")
LOSSLESS = {"bpe", "smollm2"}  # byte-level: decoding the ids gives the text back exactly


@cache
def goldens(label: str) -> dict[str, Any]:
    with gzip.open(FIXTURES / f"goldens_{label}.json.gz", "rt", encoding="utf-8") as f:
        data: dict[str, Any] = json.load(f)
    return data


@cache
def cases_by_template(label: str) -> dict[str, list[dict[str, Any]]]:
    grouped: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for case in goldens(label)["cases"]:
        grouped[case["template"]].append(case)
    return grouped


@pytest.fixture(autouse=True)
def frozen_date(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tool_formats, "today", lambda: REGISTRY["date"])


@pytest.fixture(scope="module")
def fixture_tokenizers(builtin_dir: Path) -> dict[str, dict[str, Any]]:
    folders = {"bpe": FIXTURES / "bpe", "spm": FIXTURES / "spm", "smollm2": builtin_dir}
    return {
        label: {
            "transformers": load_tokenizer(folder, require_chat_template=False),
            "rows": RowTokenizer.from_folder(folder),
        }
        for label, folder in folders.items()
    }


def test_every_llamafactory_template_name_is_registered() -> None:
    names = set(REGISTRY["text_templates"]) | set(REGISTRY["media_templates"])
    assert REGISTRY["llamafactory"] == "0.9.5"
    assert names - set(TEMPLATE_NAMES) == set()
    assert set(TEMPLATE_NAMES) == names | {"baichuan2"}, "baichuan2: kept from LLaMA-Factory 0.9.4"
    assert {TEMPLATES[name].media for name in REGISTRY["media_templates"]} == {True}
    assert not any(TEMPLATES[name].media for name in REGISTRY["text_templates"])


def test_goldens_cover_every_template_on_the_fixture_tokenizers() -> None:
    for label in ("bpe", "spm"):
        assert set(cases_by_template(label)) == set(TEMPLATE_NAMES)
        assert not any(fixed["added"] for fixed in goldens(label)["fixes"].values()), "no token is ever added"
    smollm2 = set(cases_by_template("smollm2"))
    assert {"chatml", "qwen", "qwen3", "qwen3_nothink", "yi", "smollm2", "default", "alpaca", "empty"} <= smollm2


def options_of(case: dict[str, Any]) -> tuple[TemplateOptions, bool, bool]:
    raw = dict(case["options"])
    train_on_prompt, mask_history = raw.pop("train_on_prompt", False), raw.pop("mask_history", False)
    return TemplateOptions(**raw), train_on_prompt, mask_history


def golden_labels(case: dict[str, Any]) -> list[int]:
    labels = [IGNORE_INDEX if m == "." else token for m, token in zip(case["mask"], case["input_ids"], strict=True)]
    for position, label in case["other"].items():
        labels[int(position)] = label
    return labels


def messages_of(conversation: dict[str, Any], turns: list[dict[str, str]] | None = None) -> list[dict[str, str]]:
    head = [{"role": "system", "content": conversation["system"]}] if conversation["system"] else []
    return head + (conversation["messages"] if turns is None else turns)


@contextlib.contextmanager
def installed(tokenizer: Any, name: str, options: TemplateOptions) -> Iterator[Any]:
    """``tokenizer`` with the template installed, restored afterwards (copies of transformers tokenizers are slow)."""
    eos, template = tokenizer.eos_token, tokenizer.chat_template
    try:
        yield apply_template(tokenizer, name, options)
    finally:
        tokenizer.eos_token, tokenizer.chat_template = eos, template


def encoded(tokenizer: Any, segments: list[Any]) -> tuple[list[int], list[int]]:
    [(ids, labels)] = encode_full(tokenizer, [segments])
    return ids, labels


def check_supervised(tokenizer: Any, case: dict[str, Any], label: str = "") -> str | None:
    conversation = CONVERSATIONS[case["conversation"]]
    options, train_on_prompt, mask_history = options_of(case)
    messages, tools = messages_of(conversation), conversation["tools"]

    segments = template_segments(tokenizer, case["template"], messages, tools, train_on_prompt=train_on_prompt,
                                 mask_history=mask_history, options=options)  # fmt: skip
    ids, labels = encoded(tokenizer, segments)
    if ids != case["input_ids"]:
        return "ids"
    return "labels" if labels != golden_labels(case) else None


def check_oneturn(tokenizer: Any, case: dict[str, Any], label: str = "") -> str | None:
    conversation = CONVERSATIONS[case["conversation"]]
    options, _, _ = options_of(case)
    ids, labels = encoded(
        tokenizer,
        prompt_answer_segments(tokenizer, case["template"], messages_of(conversation), conversation["tools"], options),
    )
    n = case["prompt_len"]
    if ids != case["input_ids"]:
        return "ids"
    return "labels" if labels != [IGNORE_INDEX] * n + ids[n:] else None


def check_prompt(tokenizer: Any, case: dict[str, Any], label: str) -> str | None:
    """Our prompt ids, and the text our installed chat template renders, equal LLaMA-Factory's prompt."""
    conversation = CONVERSATIONS[case["conversation"]]
    options, _, _ = options_of(case)
    history = conversation["messages"][:-1]
    turns = [*history, {"role": "assistant", "content": ""}]
    segments = prompt_answer_segments(tokenizer, case["template"], messages_of(conversation, turns), "", options)
    prompt = [(piece, learn) for piece, learn in segments if not learn]
    ids, _ = encoded(tokenizer, prompt)
    if ids != case["input_ids"]:
        return "prompt ids"
    rendered = tokenizer.apply_chat_template(
        messages_of(conversation, history), tokenize=False, add_generation_prompt=True
    )
    expected = (
        _backend(tokenizer).decode(case["input_ids"], skip_special_tokens=False)
        if label in LOSSLESS
        else "".join(piece if isinstance(piece, str) else _token_texts(tokenizer, piece) for piece, _ in prompt)
    )
    return None if rendered == expected else f"jinja {rendered!r} != {expected!r}"


CHECKS = {"supervised": check_supervised, "oneturn": check_oneturn, "prompt": check_prompt}

REFUSALS = {
    "Current template does not support `train_on_prompt`": "cannot learn prompts: unset data.train_on_prompt",
    "GLM-4 does not support parallel functions": "the glm4 tool format has no parallel calls",
    "Invalid JSON format in function message": "a function-call turn must hold JSON",
}
"""Each error LLaMA-Factory raises in the goldens, and the words of the DataError we raise instead."""


def check_refused(tokenizer: Any, case: dict[str, Any], label: str) -> str | None:
    """A case LLaMA-Factory refuses: ours refuses it too, with a DataError that says why."""
    reason = next((ours for theirs, ours in REFUSALS.items() if theirs in case["error"]), None)
    if reason is None:
        return f"LLaMA-Factory refuses it ({case['error'][:120]}); REFUSALS says nothing of this error"
    try:
        CHECKS[case["kind"]](tokenizer, case, label)
    except DataError as err:
        return None if reason in str(err) else f"refused, but not because {reason!r}: {err}"
    return f"LLaMA-Factory refuses it ({case['error'][:120]}), we do not"


def _backend(tokenizer: Any) -> Any:
    """The Rust ``tokenizers`` object of either tokenizer kind."""
    return tokenizer.backend if isinstance(tokenizer, RowTokenizer) else tokenizer.backend_tokenizer


def _token_texts(tokenizer: Any, ids: tuple[int, ...]) -> str:
    return "".join(_backend(tokenizer).id_to_token(i) for i in ids)


def missing_tokens(tokenizer: Any, name: str) -> list[str]:
    template = TEMPLATES[name]
    slots = (
        template.prefix,
        template.user,
        template.assistant,
        template.system,
        template.function,
        template.observation,
    )
    tokens = {e.text for slot in slots for e in slot if isinstance(e, Token)}
    return sorted(t for t in tokens if tokenizer.convert_tokens_to_ids(t) in (None, tokenizer.unk_token_id))


@pytest.mark.parametrize("backend", ["transformers", "rows"])
@pytest.mark.parametrize("label", TOKENIZERS)
def test_templates_encode_as_llamafactory(
    fixture_tokenizers: dict[str, dict[str, Any]], label: str, backend: str
) -> None:
    base = fixture_tokenizers[label][backend]
    failures: list[str] = []
    for name, cases in sorted(cases_by_template(label).items()):
        # Installing a template marks its stop words special: each template starts from the pristine tokenizer.
        tokenizer = copy.deepcopy(base) if TEMPLATES[name].stop_words else base
        if missing_tokens(tokenizer, name):
            with pytest.raises(DataError, match="does not have"):
                apply_template(tokenizer, name)
            continue
        for case in cases:
            options, _, _ = options_of(case)
            with installed(tokenizer, name, options) as tok:
                check = check_refused if "error" in case else CHECKS[case["kind"]]
                problem = check(tok, case, label)
            if problem:
                failures.append(f"{name} {case['kind']} {case['conversation']} {case['options']}: {problem}")
    assert not failures, f"{len(failures)} cases differ from LLaMA-Factory:\n" + "\n".join(failures[:40])


def test_where_llamafactory_adds_tokens_we_refuse_or_add_none(tokenizer: Any) -> None:
    """On SmolLM2, LLaMA-Factory adds the stop tokens it lacks (untrained rows). We refuse a template whose
    eos (replace_eos) or named token is missing, and otherwise leave the vocabulary as it is: its missing
    extra stop words are not stop tokens (and glm4's "<|user|>" in its slots stays ordinary text)."""
    refused, kept = [], []
    for name, fixed in goldens("smollm2")["fixes"].items():
        if not fixed["added"]:
            continue
        template, tok = TEMPLATES[name], copy.deepcopy(tokenizer)
        if (template.replace_eos and template.stop_words[0] in fixed["added"]) or missing_tokens(tok, name):
            with pytest.raises(DataError, match="does not have"):
                apply_template(tok, name)
            refused.append(name)
        else:
            apply_template(tok, name)
            assert len(tok) == len(tokenizer), name
            kept.append(name)
    assert {"llama3", "gemma"} <= set(refused) and {"falcon_h1", "glm4"} <= set(kept)


def _without_openai_system_quirk(system: str, tools: str) -> str:
    """LLaMA-Factory 0.9.5's OpenAI converter adds a newline to the system message of rows with tools, and a
    "detailed thinking off" line to those without (a switch of its Ling templates); we add neither."""
    if tools:
        return system.removesuffix("\n")
    return "" if system == "detailed thinking off" else system.removesuffix("\ndetailed thinking off")


@pytest.mark.parametrize(
    "raw", json.loads((FIXTURES / "raw_rows.json").read_text(encoding="utf-8")), ids=lambda raw: str(raw["id"])
)
def test_tool_rows_convert_as_llamafactory(raw: dict[str, Any]) -> None:
    from raytune_ft.data import DatasetSource, normalize_example

    expected = {c["id"]: c for c in json.loads((FIXTURES / "converted.json").read_text(encoding="utf-8"))}[raw["id"]]
    entry = raw["entry"]
    source = DatasetSource(raw["id"], "rows.json", entry["formatting"], entry.get("columns", {}), entry.get("tags", {}))
    example = normalize_example(raw["row"], "sft", {}, "rows.json: row 1", source)
    system = expected["_system"]
    if entry["formatting"] == "openai":
        system = _without_openai_system_quirk(system, expected["_tools"])
    head = [{"role": "system", "content": system}] if system else []
    assert example["messages"] == head + expected["_prompt"] + expected["_response"]
    assert example.get("tools", "") == expected["_tools"]
