"""The tokenizer the data workers load: a model's ``tokenizer.json`` and chat template, without transformers.

Importing transformers costs about 2.5 s of every data worker's start on a small CPU, and its
tokenizer call adds Python work per batch (bench/tokenize_throughput.py). ``RowTokenizer`` offers
the few calls the pipeline makes (``__call__``, ``apply_chat_template``, the special tokens) on the
Rust ``tokenizers`` backend, and renders chat templates in the Jinja environment transformers uses
(trim_blocks, lstrip_blocks, loop controls, its ``tojson``, ``raise_exception``, ``strftime_now``,
special tokens as variables), so its token rows equal transformers' (tests/unit/test_fast_tokenizer.py).
A folder it cannot read exactly (no ``tokenizer.json``, a special token the vocabulary lacks) gets
``None`` from ``RowTokenizer.from_folder``, and the caller falls back to transformers.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

__all__ = ["RowTokenizer"]

_SPECIAL_TOKENS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


class RowTokenizer:
    """Encode texts and render chat templates the way a transformers fast tokenizer does."""

    def __init__(self, backend: Any, special_tokens: dict[str, str], chat_template: str | None) -> None:
        self.backend = backend
        self.special_tokens = dict(special_tokens)
        self.chat_template = chat_template

    @classmethod
    def from_folder(cls, path: str | Path) -> RowTokenizer | None:
        """The tokenizer of a model folder, or None when only transformers can load it exactly."""
        folder = Path(path)
        if not (folder / "tokenizer.json").is_file():
            return None
        from tokenizers import Tokenizer

        backend = Tokenizer.from_file(str(folder / "tokenizer.json"))
        config = _read_json(folder / "tokenizer_config.json")
        special = {**_special_tokens(_read_json(folder / "special_tokens_map.json")), **_special_tokens(config)}
        if any(backend.token_to_id(token) is None for token in special.values()):
            return None  # transformers would add the missing token: leave that to it
        if "pad_token" not in special and "eos_token" in special:
            special["pad_token"] = special["eos_token"]  # as models.load_tokenizer does
        return cls(backend, special, _chat_template(folder, config))

    @property
    def bos_token(self) -> str | None:
        return self.special_tokens.get("bos_token")

    @property
    def unk_token(self) -> str | None:
        return self.special_tokens.get("unk_token")

    @property
    def eos_token(self) -> str | None:
        return self.special_tokens.get("eos_token")

    @eos_token.setter
    def eos_token(self, token: str) -> None:
        self.special_tokens["eos_token"] = token

    @property
    def special_tokens_map(self) -> dict[str, str]:
        return dict(self.special_tokens)

    @property
    def unk_token_id(self) -> int | None:
        unk = self.special_tokens.get("unk_token")
        return None if unk is None else self.backend.token_to_id(unk)

    @property
    def bos_token_id(self) -> int | None:
        return None if self.bos_token is None else self.backend.token_to_id(self.bos_token)

    @property
    def eos_token_id(self) -> int | None:
        return None if self.eos_token is None else self.backend.token_to_id(self.eos_token)

    def convert_tokens_to_ids(self, token: str) -> int | None:
        token_id = self.backend.token_to_id(token)
        return self.unk_token_id if token_id is None else token_id

    def add_tokens(self, tokens: Sequence[str], special_tokens: bool = False) -> int:
        """Register ``tokens`` as added (matched whole in text) tokens; returns how many were new to the list."""
        from tokenizers import AddedToken

        added = [AddedToken(token, special=special_tokens, normalized=not special_tokens) for token in tokens]
        return int(self.backend.add_special_tokens(added) if special_tokens else self.backend.add_tokens(added))

    def __call__(self, text: str | Sequence[str], add_special_tokens: bool = True) -> dict[str, Any]:
        """``{"input_ids": ...}``: one list of ids for a string, a list of lists for a batch."""
        if isinstance(text, str):
            return {"input_ids": self.backend.encode(text, add_special_tokens=add_special_tokens).ids}
        encodings = self.backend.encode_batch_fast(list(text), add_special_tokens=add_special_tokens)
        return {"input_ids": [encoding.ids for encoding in encodings]}

    def apply_chat_template(
        self, messages: Sequence[dict[str, Any]], tokenize: bool = False, add_generation_prompt: bool = False
    ) -> str:
        """The rendered conversation (text only: ``tokenize=True`` is not offered)."""
        if tokenize:
            raise ValueError("RowTokenizer.apply_chat_template renders text only; tokenize the result")
        if not self.chat_template:
            raise ValueError("this tokenizer has no chat template; set data.template")
        template = _compiled(self.chat_template)
        return str(
            template.render(
                messages=list(messages),
                tools=None,
                documents=None,
                add_generation_prompt=add_generation_prompt,
                **self.special_tokens,
            )
        )


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    value = json.loads(path.read_text(encoding="utf-8"))
    return value if isinstance(value, dict) else {}


def _special_tokens(config: dict[str, Any]) -> dict[str, str]:
    """Named special tokens, written as strings or as serialised AddedTokens (``{"content": ...}``)."""
    out = {}
    for name in _SPECIAL_TOKENS:
        value = config.get(name)
        if isinstance(value, dict):
            value = value.get("content")
        if isinstance(value, str):
            out[name] = value
    return out


def _chat_template(folder: Path, config: dict[str, Any]) -> str | None:
    """Where transformers looks: ``chat_template.jinja``, then ``tokenizer_config.json`` (a string, or a
    list of named templates whose ``default`` is used)."""
    if (folder / "chat_template.jinja").is_file():
        return (folder / "chat_template.jinja").read_text(encoding="utf-8")
    value = config.get("chat_template")
    if isinstance(value, list):
        value = next((t.get("template") for t in value if isinstance(t, dict) and t.get("name") == "default"), None)
    return value if isinstance(value, str) else None


@functools.lru_cache(maxsize=8)
def _compiled(source: str) -> Any:
    """The template compiled as transformers compiles it (``_cached_compile_jinja_template``)."""
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_generation_tag(), jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(source)


def _tojson(
    value: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None, sort_keys: bool = False
) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _raise_exception(message: str) -> None:
    import jinja2

    raise jinja2.exceptions.TemplateError(message)


def _generation_tag() -> type:
    """``{% generation %}...{% endgeneration %}`` renders its body (transformers uses it to mark answers)."""
    import jinja2.nodes
    from jinja2.ext import Extension

    class GenerationTag(Extension):  # type: ignore[misc]
        tags = {"generation"}  # noqa: RUF012 (jinja reads it as a class attribute)

        def parse(self, parser: Any) -> Any:
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.Scope(body).set_lineno(lineno)

    return GenerationTag
