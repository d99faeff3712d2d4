"""Where training rows come from: LLaMA-Factory ``dataset_info.json`` entries, bundled dataset
names, or file paths.

Resolution happens on the driver before anything is read, so a typo in a dataset name or a
registry entry we cannot honour fails in a second, naming the entry and the fix, instead of deep
inside a Ray task.
"""

from __future__ import annotations

import difflib
import fnmatch
import glob
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from raytune_ft.config import InputError

__all__ = [
    "BUILTIN_DATASETS",
    "FORMATTINGS",
    "DataError",
    "DatasetSource",
    "check_row_format",
    "dataset_names",
    "resolve_datasets",
]

_BUILTIN_DIR = Path(__file__).parent / "builtin"

BUILTIN_DATASETS: dict[str, Path] = {
    "identity": _BUILTIN_DIR / "identity.jsonl",
    "alpaca_300": _BUILTIN_DIR / "alpaca_300.jsonl",
    "pref_300": _BUILTIN_DIR / "pref_300.jsonl",
    "kto_300": _BUILTIN_DIR / "kto_300.jsonl",
    "text_300": _BUILTIN_DIR / "text_300.jsonl",
}
FORMATTINGS = ("alpaca", "sharegpt", "openai")
READERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}
_REGISTRY_FILE = "dataset_info.json"
_HUB_KEYS = ("hf_hub_url", "ms_hub_url", "om_hub_url", "script_url", "cloud_file_name")
_ENTRY_KEYS = {"file_name", "formatting", "ranking", "columns", "tags", *_HUB_KEYS}
_COLUMN_KEYS = (
    "prompt", "query", "response", "history", "messages", "system", "tools", "chosen", "rejected", "kto_tag",
)  # fmt: skip
_TAG_KEYS = ("role_tag", "content_tag", "user_tag", "assistant_tag", "observation_tag", "function_tag", "system_tag")


class DataError(InputError):
    """Bad dataset input; the message names the dataset, file or row and what to do."""


@dataclass(frozen=True)
class DatasetSource:
    name: str
    """What the user wrote in ``data.dataset``."""
    path: Path | str
    """The file or folder of files that holds the rows (a Path), or a glob pattern or a
    pyarrow/fsspec URI such as ``s3://bucket/data/*.jsonl`` (a str)."""
    formatting: str | None = None
    """``alpaca``, ``sharegpt`` or ``openai``; None recognises alpaca or ``messages`` rows per row."""
    columns: Mapping[str, str] = field(default_factory=dict)
    """LLaMA-Factory column mapping (prompt, query, response, history, messages, system, ...)."""
    tags: Mapping[str, str] = field(default_factory=dict)
    """LLaMA-Factory sharegpt tags (role_tag, content_tag, user_tag, assistant_tag, ...)."""
    reader: str = "json"
    """Reader for the files: ``json`` (also JSON lines), ``parquet`` or ``csv``."""
    ranking: bool | None = None
    """Registry entries say whether they hold preference pairs (``ranking``); None for files and
    bundled sets, whose rows are recognised as they are read."""

    def read_paths(self) -> list[str]:
        """What the reader opens: the file or folder, each file a glob matched, or the URI."""
        text = str(self.path)
        if _is_uri(text) or not _is_glob(text):
            return [text]
        return sorted(glob.glob(text, recursive=True))

    def owns(self, file: str) -> bool:
        """Whether ``file`` (as the reader reports it, URI scheme stripped) belongs to this source."""
        text = str(self.path).split("://", 1)[-1]
        if _is_glob(text):
            return fnmatch.fnmatch(file, text) or fnmatch.fnmatch(file, "*/" + text.lstrip("/"))
        return file == text or file.startswith(text.rstrip("/") + "/") or file.endswith("/" + text.lstrip("/"))


def _is_uri(text: str) -> bool:
    return "://" in text


def _is_glob(text: str) -> bool:
    return any(ch in text for ch in "*?[")


def resolve_datasets(names: list[str], dataset_dir: str | Path | None = None) -> list[DatasetSource]:
    """Map every ``data.dataset`` entry to readable files, or raise ``DataError``."""
    if not names:
        raise DataError("data.dataset is empty: name at least one dataset (e.g. identity)")
    registry = _load_registry(Path(dataset_dir)) if dataset_dir is not None else {}
    sources = [_resolve_one(name, registry, Path(dataset_dir or ".")) for name in names]
    _check_shared_files(sources)
    return sources


def _check_shared_files(sources: list[DatasetSource]) -> None:
    # Rows are matched to their source by file path inside Ray Data, so one file cannot be read
    # under two different formats in the same run.
    by_path: dict[Path | str, DatasetSource] = {}
    for source in sources:
        other = by_path.setdefault(source.path, source)
        if (other.formatting, other.columns, other.tags) != (source.formatting, source.columns, source.tags):
            raise DataError(
                f"datasets {other.name!r} and {source.name!r} read the same file {source.path} with different "
                "formats, columns or tags; use one of them per run"
            )


def _reader_for(name: str, path: Path) -> str:
    files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.is_file())
    kinds = {READERS.get(p.suffix) for p in files}
    if len(kinds) != 1 or None in kinds:
        names = ", ".join(p.name for p in files[:5]) or "no files"
        raise DataError(f"dataset {name!r}: {path} must hold files of one kind ({', '.join(READERS)}); found {names}")
    return str(kinds.pop())


def dataset_names(dataset_dir: str | Path | None) -> list[str]:
    """Every name ``data.dataset`` accepts without a path: the bundled sets, then ``dataset_dir``'s
    ``dataset_info.json`` entries."""
    registry = _load_registry(Path(dataset_dir)) if dataset_dir is not None else {}
    return [*BUILTIN_DATASETS, *sorted(set(registry) - set(BUILTIN_DATASETS))]


def _load_registry(folder: Path) -> dict[str, Any]:
    path = folder / _REGISTRY_FILE
    if not path.is_file():
        return {}
    try:
        registry = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(registry, dict) or not all(isinstance(v, dict) for v in registry.values()):
        raise DataError(f'{path}: must map dataset names to objects such as {{"file_name": "data.json"}}')
    return registry


def _resolve_one(name: str, registry: dict[str, Any], folder: Path) -> DatasetSource:
    if name in registry:
        return _from_entry(name, registry[name], folder)
    if name in BUILTIN_DATASETS:
        return DatasetSource(name, BUILTIN_DATASETS[name])
    if _is_uri(name) or _is_glob(name):
        return _pattern_source(name)
    path = Path(name).expanduser()
    if path.suffix in READERS or path.is_dir():
        if not path.exists():
            raise DataError(f"data.dataset {name!r}: file not found (resolved to {path.resolve()})")
        return DatasetSource(name, path.resolve(), reader=_reader_for(name, path))
    known = [*registry, *BUILTIN_DATASETS]
    close = difflib.get_close_matches(name, known, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    where = f"{folder / _REGISTRY_FILE}, " if registry else ""
    raise DataError(
        f"data.dataset {name!r} is not in {where}the bundled datasets ({', '.join(BUILTIN_DATASETS)}), nor a "
        f"path to a {'/'.join(READERS)} file or folder.{hint}"
    )


def _pattern_source(name: str) -> DatasetSource:
    """A glob over local files, or a remote URI (read by pyarrow/fsspec on the nodes)."""
    if _is_uri(name):
        reader = READERS.get(Path(name.split("?", 1)[0]).suffix)
        if reader is None:
            known = "/".join(READERS)
            raise DataError(f"data.dataset {name!r}: name the files with a {known} extension (a glob works)")
        return DatasetSource(name, name, reader=reader)
    pattern = str(Path(name).expanduser().absolute())
    files = sorted(glob.glob(pattern, recursive=True))
    if not files:
        raise DataError(f"data.dataset {name!r}: the pattern matches no files (looked for {pattern})")
    kinds = {READERS.get(Path(f).suffix) for f in files}
    if len(kinds) != 1 or None in kinds:
        raise DataError(f"data.dataset {name!r} matches files of several kinds: {', '.join(files[:5])}")
    return DatasetSource(name, pattern, reader=str(kinds.pop()))


def _from_entry(name: str, entry: dict[str, Any], folder: Path) -> DatasetSource:
    """Validate a registry entry once, then locate its files (on disk, or fetched from the hub)."""
    where = f"{folder / _REGISTRY_FILE} entry {name!r}"
    unknown = sorted(set(entry) - _ENTRY_KEYS)
    if unknown:
        raise DataError(f"{where}: keys {unknown} are not supported (known: {', '.join(sorted(_ENTRY_KEYS))})")
    formatting = entry.get("formatting", "alpaca")
    if formatting not in FORMATTINGS:
        raise DataError(f"{where}: formatting {formatting!r} is unknown; use one of {', '.join(FORMATTINGS)}")
    columns = _checked_keys(entry.get("columns", {}), _COLUMN_KEYS, f"{where}: columns")
    tags = _checked_keys(entry.get("tags", {}), _TAG_KEYS, f"{where}: tags")
    path, reader = (
        _local_files(name, entry, folder, where) if "file_name" in entry else _hub_files(entry, folder, where)
    )
    return DatasetSource(name, path, formatting, columns, tags, reader, ranking=bool(entry.get("ranking")))


def _local_files(name: str, entry: dict[str, Any], folder: Path, where: str) -> tuple[Path, str]:
    path = (folder / entry["file_name"]).resolve()
    if not path.exists():
        raise DataError(f"{where}: file_name {entry['file_name']!r} not found (resolved to {path})")
    return path, _reader_for(name, path)


def _hub_files(entry: dict[str, Any], folder: Path, where: str) -> tuple[str, str]:
    """Download a ``hf_hub_url`` dataset's data files into the local HF cache, or say how to do without."""
    hub = next((entry[k] for k in _HUB_KEYS if k in entry), None)
    fix = (
        f'Download it where the network allows, put the files under {folder} and set "file_name" in the '
        "entry, or pass the files' path in data.dataset."
    )
    if "hf_hub_url" not in entry:
        raise DataError(f"{where}: only Hugging Face hub entries (hf_hub_url) can be fetched, not {hub}. {fix}")
    try:
        from huggingface_hub import snapshot_download

        local = snapshot_download(
            entry["hf_hub_url"], repo_type="dataset", allow_patterns=[f"*{suffix}" for suffix in READERS]
        )
    except Exception as err:  # offline, unknown repo, no access: all end in the same advice
        raise DataError(
            f"{where}: could not fetch {hub} from the Hugging Face hub ({type(err).__name__}). {fix}"
        ) from None
    files = sorted(p for p in Path(local).rglob("*") if p.suffix in READERS)
    kinds = {READERS[p.suffix] for p in files}
    if len(kinds) != 1:
        raise DataError(f"{where}: {hub} holds {len(files)} data files of kinds {sorted(kinds)}; {fix}")
    return str(Path(local) / "**" / f"*{files[0].suffix}"), kinds.pop()


def _checked_keys(mapping: object, valid: tuple[str, ...], where: str) -> dict[str, str]:
    if not isinstance(mapping, dict) or not all(isinstance(v, str) for v in mapping.values()):
        raise DataError(f"{where} must map names to column or tag strings")
    for key in mapping:
        if key not in valid:
            close = difflib.get_close_matches(key, valid, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; valid: {', '.join(valid)}"
            raise DataError(f"{where}: unknown key {key!r}{hint}")
    return dict(mapping)


def check_row_format(sources: list[DatasetSource], rows: str) -> None:
    """Refuse registry datasets whose ``ranking`` flag does not fit the stage's row format, before
    any row is read: pairs train ``rm``/``dpo`` only, and those stages need pairs."""
    for source in sources:
        if source.ranking is None:
            continue
        if source.ranking and rows != "preference":
            raise DataError(
                f"dataset {source.name!r} is a ranking (preference) dataset: train it with method.stage rm or dpo, "
                "or pick an instruction dataset"
            )
        if not source.ranking and rows == "preference":
            raise DataError(
                f"dataset {source.name!r} has no chosen/rejected pairs (its dataset_info.json entry lacks "
                '"ranking": true); method.stage rm and dpo train on preference pairs'
            )
