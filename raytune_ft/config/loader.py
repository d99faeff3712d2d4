"""Read a job YAML plus ``key=value`` overrides into a validated ``JobConfig``.

This is the only place YAML is parsed. Validation errors are rewritten into one message per
problem that names the file, the dotted key, what is wrong and the closest valid key, so a typo
never silently becomes a default.
"""

from __future__ import annotations

import difflib
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from .llamafactory import LlamaFactoryTranslation, looks_like_llamafactory, translate_llamafactory
from .schema import JobConfig

__all__ = [
    "ConfigError",
    "ConfigWarning",
    "InputError",
    "dump_config",
    "llamafactory_translation",
    "load_config",
    "parse_overrides",
    "with_values",
]


class InputError(ValueError):
    """Base of every error caused by what the user gave us (config, data, model, checkpoint).

    The CLI prints these as one line and exits 2; anything else is a bug and keeps its traceback.
    """


class ConfigError(InputError):
    """A config that cannot be used; ``str()`` lists every problem found, and ``problems`` holds the
    invalid values' messages by dotted key (what a form shows under each field)."""

    def __init__(self, message: str, problems: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or {}


class ConfigWarning(UserWarning):
    """Config keys that are accepted but change nothing here."""


def load_config(path: str | Path | None, overrides: Iterable[str] = ()) -> JobConfig:
    """Validated config from ``path`` (ours or a flat LLaMA-Factory YAML, or defaults when None)
    with dotted overrides applied."""
    source = str(path) if path is not None else "<defaults>"
    raw = _read_yaml(Path(path)) if path is not None else {}
    translation = _translate(raw, source)
    if translation is not None:
        raw = translation.config
        if translation.ignored:
            listed = "; ".join(f"{key} ({why})" for key, why in translation.ignored.items())
            warnings.warn(f"{source}: LLaMA-Factory keys accepted but not used: {listed}", ConfigWarning, stacklevel=2)
    for key, value in parse_overrides(overrides).items():
        _set_dotted(raw, key, value, source)
    try:
        return JobConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(*_explain(err, source)) from None


def with_values(cfg: JobConfig, values: Mapping[str, Any], source: str = "<sweep>") -> JobConfig:
    """``cfg`` with dotted keys set to ``values`` (a sweep trial's draw), validated again."""
    raw = cfg.model_dump(mode="json")
    for key, value in values.items():
        _set_dotted(raw, key, value, source)
    try:
        return JobConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(*_explain(err, source)) from None


def llamafactory_translation(path: str | Path) -> LlamaFactoryTranslation | None:
    """How a flat LLaMA-Factory YAML maps onto our config (None for our own format)."""
    return _translate(_read_yaml(Path(path)), str(path))


def _translate(raw: dict[str, Any], source: str) -> LlamaFactoryTranslation | None:
    if not looks_like_llamafactory(raw, set(JobConfig.model_fields)):
        return None
    return translate_llamafactory(raw, source)


def dump_config(cfg: JobConfig) -> str:
    """The fully resolved config as YAML that ``load_config`` reads back to an equal config."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """``["train.max_steps=10", "data.dataset=a,b"]`` -> ``{"train.max_steps": 10, ...}`` (YAML-typed)."""
    parsed: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} is not of the form section.key=value")
        parsed[key.strip()] = yaml.safe_load(value) if value.strip() else None
    return parsed


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(data).__name__}")
    return data


def _set_dotted(raw: dict[str, Any], key: str, value: Any, source: str) -> None:
    node = raw
    *parents, leaf = key.split(".")
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{source}: override {key!r}: {part!r} is not a section")
        node = child
    node[leaf] = value


def _explain(err: ValidationError, source: str) -> tuple[str, dict[str, str]]:
    """The message listing every problem, and the invalid values' messages by dotted key."""
    lines = [f"{source}: invalid config ({err.error_count()} problem{'s' * (err.error_count() > 1)})"]
    problems: dict[str, str] = {}
    for problem in err.errors():
        loc = [str(p) for p in problem["loc"]]
        key = ".".join(loc) or "<top level>"
        if problem["type"] == "extra_forbidden":
            lines.append(f"  - unknown key {key!r}{_suggest(loc)}")
        else:
            got = problem.get("input")
            shown = "" if isinstance(got, Mapping) else f" (got {got!r})"
            problems[key] = f"{problem['msg']}{shown}"
            lines.append(f"  - {key}: {problems[key]}")
    return "\n".join(lines), problems


def _suggest(loc: list[str]) -> str:
    model: type[BaseModel] = JobConfig
    for part in loc[:-1]:
        field = model.model_fields.get(part)
        annotation = field.annotation if field else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return ""
        model = annotation
    valid = [field.alias or name for name, field in model.model_fields.items()]  # rollout.async is spelled so
    close = difflib.get_close_matches(loc[-1], valid, n=1, cutoff=0.6)
    prefix = ".".join([*loc[:-1], ""])
    if close:
        return f"; did you mean {prefix + close[0]!r}?"
    if not valid:
        return f"; the {'.'.join(loc[:-1])} section has no settings in this release"
    return f"; valid keys here: {', '.join(valid)}"
