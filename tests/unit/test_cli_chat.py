"""The CLI surface without Ray: validate reports config errors cleanly, chat streams what it returns,
and the interactive loop keeps a multi-turn history."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest

from raytune_ft.cli import main
from raytune_ft.models import load_for_inference
from raytune_ft.serve import HFChatter, generate_reply, interactive_chat

QUICKSTART = Path(__file__).parents[2] / "configs" / "quickstart.yaml"


def test_validate_ok_and_explain(capsys: Any) -> None:
    assert main(["validate", str(QUICKSTART), "--explain", "train.max_steps=3"]) == 0
    out = capsys.readouterr().out
    assert "valid" in out and "max_steps: 3" in out


def test_validate_error_is_one_clear_message(capsys: Any) -> None:
    assert main(["validate", str(QUICKSTART), "train.lr=0.1"]) == 2
    err = capsys.readouterr().err
    assert "unknown key 'train.lr'" in err
    assert "Traceback" not in err


def test_validate_unknown_dataset(capsys: Any) -> None:
    assert main(["validate", str(QUICKSTART), "data.dataset=alpaca300"]) == 2
    assert "Did you mean 'alpaca_300'" in capsys.readouterr().err


def test_help_explains_the_commands(capsys: Any) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for word in ("train", "validate", "chat", "ray job submit"):
        assert word in out


def test_streamed_text_equals_the_reply(builtin_dir: Path) -> None:
    model, tokenizer = load_for_inference(str(builtin_dir))
    pieces: list[str] = []
    reply = generate_reply(model, tokenizer, [{"role": "user", "content": "Hi"}], 12, 0.0, pieces.append)
    assert reply and "".join(pieces).strip() == reply


def test_interactive_chat_keeps_history(tiny_model_dir: Path, monkeypatch: Any) -> None:
    model, tokenizer = load_for_inference(str(tiny_model_dir))
    seen: list[int] = []
    original = tokenizer.apply_chat_template

    def spy(messages: list[dict[str, str]], **kwargs: Any) -> Any:
        seen.append(len(messages))
        return original(messages, **kwargs)

    monkeypatch.setattr(tokenizer, "apply_chat_template", spy)
    out = io.StringIO()
    chatter = HFChatter(model, tokenizer)
    interactive_chat(chatter, None, 4, 0.0, stdin=io.StringIO("Hi\nAnd then?\nclear\nNew\nexit\n"), stdout=out)
    assert seen == [1, 3, 1], "the second turn sees the first exchange; 'clear' forgets it"
    assert out.getvalue().count("Assistant: ") == 3


def test_validate_checks_the_template_name(capsys: pytest.CaptureFixture[str]) -> None:
    # The config itself refuses the name (as every command's config load does), naming the key.
    assert main(["validate", str(QUICKSTART), "data.template=chatlm"]) == 2
    err = capsys.readouterr().err
    assert "invalid config" in err and "data.template" in err
    assert "unknown chat template 'chatlm' (did you mean 'chatml'?)" in err


def test_chat_stops_at_the_template_stop_word_saved_with_the_tokenizer(tiny_model_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    from raytune_ft.data.templates import apply_template
    from raytune_ft.serve.chat import _stop_ids

    # yi keeps the tokenizer's eos but ends every answer with <|im_end|>: generation must stop there too.
    base = AutoTokenizer.from_pretrained(tiny_model_dir)
    base.eos_token = "<|endoftext|>"  # a Yi-like tokenizer, whose eos is not the end-of-turn marker
    model, _ = load_for_inference(str(tiny_model_dir))
    model.generation_config.eos_token_id = base.eos_token_id
    im_end = base.convert_tokens_to_ids("<|im_end|>")
    assert im_end not in _stop_ids(model, base)
    saved = tmp_path / "checkpoint"
    apply_template(base, "yi").save_pretrained(saved)
    reloaded = AutoTokenizer.from_pretrained(saved)
    assert reloaded.eos_token == "<|endoftext|>"
    assert set(_stop_ids(model, reloaded)) == {reloaded.eos_token_id, im_end}


def test_env_reports_versions_devices_and_the_cluster_it_would_join(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch as torch_module

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert main(["env"]) == 0
    out = capsys.readouterr().out
    assert f"torch             {torch_module.__version__}" in out and "cpus" in out and "hf cache" in out
    assert "starts a private local Ray" in out
    assert main(["env", "--address", "ray://head:10001"]) == 0
    assert "joins ray://head:10001 (--address)" in capsys.readouterr().out


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    from raytune_ft import __version__

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.strip() == f"raytune-ft {__version__}"
