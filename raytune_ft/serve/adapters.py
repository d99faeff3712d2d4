"""Which LoRA adapters an endpoint serves, and where each one's weights are: model names to folders.

A served adapter is addressed as ``BASE:NAME`` (its newest checkpoint) or ``BASE:NAME:STEP`` (one
checkpoint). Names come only from the config (``serve.adapters``) or are run folders found directly
under ``serve.adapter_root``; a step is matched against the checkpoints that exist. No part of a
request is ever joined into a path, so no name can reach outside the configured folders.

The catalog is read from disk on every lookup, so a checkpoint that a running training job writes
after the app started is servable at once.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from raytune_ft.config import SERVED_NAME
from raytune_ft.data.templates import STOP_WORDS_KEY
from raytune_ft.models.checkpoint import STATE_FILE, checkpoint_step, is_adapter_checkpoint

__all__ = ["AdapterCatalog", "InvalidModelName", "UnknownModel", "chat_template", "saved_stop_ids"]

_NAME = re.compile(SERVED_NAME)


class UnknownModel(LookupError):
    """A well-formed model name that names no served model, adapter or checkpoint (HTTP 404)."""


class InvalidModelName(ValueError):
    """A model name that cannot name anything we serve (HTTP 400)."""


@dataclass(frozen=True)
class AdapterCatalog:
    base: str
    """The base model's served name: every adapter id starts with ``base:``."""
    runs: dict[str, str] = field(default_factory=dict)
    """Configured adapters: name -> run directory or checkpoint folder."""
    root: str | None = None
    """A folder whose run directories are adapters too, by folder name."""

    def names(self) -> list[str]:
        """Every adapter name that has at least one adapter checkpoint now."""
        return sorted(self._scan())

    def versions(self, name: str) -> dict[int, Path]:
        """The adapter checkpoints of ``name`` by training step (empty when there are none)."""
        folder = self._folder(name)
        if folder is None:
            return {}
        if is_adapter_checkpoint(folder) and not (folder / STATE_FILE).is_file():
            return {0: folder}  # a PEFT adapter folder from elsewhere (adapter.init_from): one version, step 0
        candidates = [folder] if (folder / STATE_FILE).is_file() else [c for c in folder.glob("*/")]
        adapters = [c for c in candidates if (c / STATE_FILE).is_file() and is_adapter_checkpoint(c)]
        return {checkpoint_step(c): c for c in adapters}

    def model_ids(self) -> list[str]:
        """Every servable adapter id: ``base:name`` for the newest, and ``base:name:step`` for each."""
        ids = []
        for name, versions in sorted(self._scan().items()):
            ids += [f"{self.base}:{name}", *(f"{self.base}:{name}:{step}" for step in sorted(versions))]
        return ids

    def lookup(self, model_id: str) -> tuple[str, Path]:
        """``base:name`` -> (``base:name:<newest step>``, its folder); ``base:name:step`` checked to exist.

        One scan of the adapter's folder: a request pays for it once.
        """
        name, step = self._parse(model_id)
        versions = self.versions(name)
        if not versions:
            raise UnknownModel(f"model {model_id!r}: no adapter {name!r} is served; GET /v1/models lists them")
        if step is None:
            step = max(versions)
        elif step not in versions:
            steps = ", ".join(str(s) for s in sorted(versions))
            raise UnknownModel(f"model {model_id!r}: adapter {name!r} has no checkpoint at step {step} (has {steps})")
        return f"{self.base}:{name}:{step}", versions[step]

    def resolve(self, model_id: str) -> str:
        """``base:name`` -> ``base:name:<newest step>``; ``base:name:step`` checked to exist."""
        return self.lookup(model_id)[0]

    def folder(self, model_id: str) -> Path:
        """The checkpoint folder of ``model_id`` (newest for ``base:name``)."""
        return self.lookup(model_id)[1]

    def _scan(self) -> dict[str, dict[int, Path]]:
        """Every adapter name with its checkpoints (names without any left out)."""
        found = set(self.runs)
        if self.root is not None and Path(self.root).is_dir():
            found |= {child.name for child in Path(self.root).iterdir() if _NAME.match(child.name)}
        scanned = {name: self.versions(name) for name in found}
        return {name: versions for name, versions in scanned.items() if versions}

    def _parse(self, model_id: str) -> tuple[str, int | None]:
        base, _, rest = model_id.partition(":")
        name, _, step = rest.partition(":")
        if base != self.base:
            raise UnknownModel(f"model {model_id!r}: the base model served here is {self.base!r}")
        if not _NAME.match(name) or (step and not step.isdigit()):
            raise InvalidModelName(
                f"model {model_id!r}: an adapter is named {self.base}:NAME or {self.base}:NAME:STEP, NAME of letters, "
                "digits, '.', '_' and '-', STEP a checkpoint's training step"
            )
        return name, int(step) if step else None

    def _folder(self, name: str) -> Path | None:
        if name in self.runs:
            return Path(self.runs[name]).expanduser()
        if self.root is not None and _NAME.match(name):
            candidate = Path(self.root).expanduser() / name
            return candidate if candidate.is_dir() else None
        return None


def chat_template(folder: Path) -> str | None:
    """The chat template a tokenizer folder was saved with (``chat_template.jinja`` or the config's)."""
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    config = folder / "tokenizer_config.json"
    if config.is_file():
        template = json.loads(config.read_text(encoding="utf-8")).get("chat_template")
        return template if isinstance(template, str) else None
    return None


@functools.lru_cache(maxsize=256)
def saved_stop_ids(folder: Path) -> tuple[int, ...]:
    """Token ids of the stop words a named template recorded in a tokenizer folder (``STOP_WORDS_KEY``), each
    one vocabulary token: where its answers end besides the eos (a ``yi`` answer ends with ``<|im_end|>``).
    Read from the files once per folder; checkpoint folders do not change once written."""
    config, vocabulary = folder / "tokenizer_config.json", folder / "tokenizer.json"
    words = json.loads(config.read_text(encoding="utf-8")).get(STOP_WORDS_KEY) if config.is_file() else None
    if not words or not vocabulary.is_file():
        return ()
    from tokenizers import Tokenizer

    backend = Tokenizer.from_file(str(vocabulary))
    return tuple(sorted({i for i in (backend.token_to_id(word) for word in words) if i is not None}))
