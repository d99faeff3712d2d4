"""Where training rows come from: LLaMA-Factory ``dataset_info.json`` entries, bundled dataset
names, or file paths.

Resolution happens on the driver before anything is read, so a typo in a dataset name or a
registry entry we cannot honour fails in a second, naming the entry and the fix, instead of deep
inside a Ray task. Hub entries resolve here too, to the files of their subset and split in the
local hub cache (``hub.py``, ``layout.py``).
"""

from __future__ import annotations

import difflib
import fnmatch
import glob
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from raytune_ft.config import InputError

__all__ = [
    "BUILTIN_DATASETS",
    "FORMATTINGS",
    "LOAD_FROM",
    "READERS",
    "DataError",
    "DatasetSource",
    "check_row_format",
    "dataset_names",
    "env_flag",
    "load_from",
    "registry_folder",
    "resolve_datasets",
]

_BUILTIN_DIR = Path(__file__).parent / "builtin"

BUILTIN_DATASETS: dict[str, Path] = {
    "identity": _BUILTIN_DIR / "identity.jsonl",
    "alpaca_300": _BUILTIN_DIR / "alpaca_300.jsonl",
    "pref_300": _BUILTIN_DIR / "pref_300.jsonl",
    "kto_300": _BUILTIN_DIR / "kto_300.jsonl",
    "text_300": _BUILTIN_DIR / "text_300.jsonl",
    "arithmetic_1k": _BUILTIN_DIR / "arithmetic_1k.jsonl",
    "arithmetic_test_200": _BUILTIN_DIR / "arithmetic_test_200.jsonl",
}
FORMATTINGS = ("alpaca", "sharegpt", "openai")
READERS = {
    ".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv", ".txt": "text", ".arrow": "arrow",
}  # fmt: skip
_REGISTRY_FILE = "dataset_info.json"
LOAD_FROM = {
    "hf_hub": "hf_hub_url", "ms_hub": "ms_hub_url", "om_hub": "om_hub_url", "script": "script_url",
    "cloud_file": "cloud_file_name", "file": "file_name",
}  # fmt: skip
"""``load_from`` values and the entry key each reads, in LLaMA-Factory's order of preference."""
_ENTRY_KEYS = {
    "formatting", "ranking", "columns", "tags", "subset", "split", "folder", "num_samples", "load_from",
    *LOAD_FROM.values(),
}  # fmt: skip
_REMOTE, _ONLINE = "REMOTE:", "ONLINE"
_COLUMN_KEYS = (
    "prompt", "query", "response", "history", "messages", "system", "tools", "chosen", "rejected", "kto_tag",
    "images", "videos",
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
    """Reader for the files: ``json`` (also JSON lines), ``parquet``, ``csv``, ``text`` (one row per
    line) or ``arrow``."""
    ranking: bool | None = None
    """Registry entries say whether they hold preference pairs (``ranking``); None for files and
    bundled sets, whose rows are recognised as they are read."""
    files: tuple[str, ...] = ()
    """The exact files to read (a hub dataset's subset and split), when ``path`` is only their folder."""
    num_samples: int | None = None
    """Rows to draw from the dataset (``num_samples`` of its registry entry); None reads every row."""
    extensions: tuple[str, ...] | None = None
    """Read only files with these extensions from a folder URI (a ``cloud_file_name`` folder)."""
    media_dir: str | None = None
    """Folder that relative image and video paths start from: the registry's folder for its entries (as
    LLaMA-Factory's default ``media_dir``); None: the data file's own folder."""

    def read_paths(self) -> list[str]:
        """What the reader opens: the chosen files, the file or folder, each file a glob matched, or the URI."""
        if self.files:
            return list(self.files)
        text = str(self.path)
        if _is_uri(text) or not _is_glob(text):
            return [text]
        return sorted(glob.glob(text, recursive=True))

    def owns(self, file: str) -> bool:
        """Whether ``file`` (as the reader reports it, URI scheme stripped) belongs to this source."""
        if self.files:
            return any(file == f or f.endswith("/" + file.lstrip("/")) for f in self.files)
        text = str(self.path).split("://", 1)[-1]
        if _is_glob(text):
            return fnmatch.fnmatch(file, text) or fnmatch.fnmatch(file, "*/" + text.lstrip("/"))
        return file == text or file.startswith(text.rstrip("/") + "/") or file.endswith("/" + text.lstrip("/"))


def _is_uri(text: str) -> bool:
    return "://" in text


def _is_glob(text: str) -> bool:
    return any(ch in text for ch in "*?[")


def resolve_datasets(names: list[str], dataset_dir: str | Path | None = None) -> list[DatasetSource]:
    """Map every ``data.dataset`` entry to readable files, or raise ``DataError``.

    ``dataset_dir`` is a folder with a ``dataset_info.json``, ``REMOTE:org/repo`` (that file and its
    data from a Hugging Face dataset repository) or ``ONLINE`` (names are hub dataset repositories).
    """
    if not names:
        raise DataError("data.dataset is empty: name at least one dataset (e.g. identity)")
    folder = registry_folder(dataset_dir)
    registry = _load_registry(folder) if folder is not None else {}
    online = str(dataset_dir) == _ONLINE
    sources = [_resolve_one(name, registry, folder or Path("."), online) for name in names]
    _check_shared_files(sources)
    return sources


def registry_folder(dataset_dir: str | Path | None) -> Path | None:
    """The local folder of ``dataset_dir``: itself, or the cached snapshot of a ``REMOTE:`` repository;
    None for ``ONLINE`` or no folder."""
    if dataset_dir is None or str(dataset_dir) == _ONLINE:
        return None
    text = str(dataset_dir)
    if not text.startswith(_REMOTE):
        return Path(text).expanduser()
    from .hub import dataset_snapshot, split_revision

    repo, revision = split_revision(text.removeprefix(_REMOTE))
    return dataset_snapshot("hf_hub", repo, revision, f"data.dataset_dir {text!r}", patterns=None)


def _check_shared_files(sources: list[DatasetSource]) -> None:
    # Rows are matched to their source by file path inside Ray Data, so one file cannot be read
    # under two different formats in the same run.
    by_path: dict[Path | str, DatasetSource] = {}
    for source in sources:
        for path in source.files or (source.path,):
            other = by_path.setdefault(path, source)
            if (other.formatting, other.columns, other.tags) != (source.formatting, source.columns, source.tags):
                raise DataError(
                    f"datasets {other.name!r} and {source.name!r} read the same file {path} with different "
                    "formats, columns or tags; use one of them per run"
                )


def _reader_for(name: str, path: Path) -> str:
    files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.is_file())
    return _one_reader(name, files, str(path))


def _one_reader(name: str, files: list[Path], where: str) -> str:
    kinds = {READERS.get(p.suffix) for p in files}
    if len(kinds) != 1 or None in kinds:
        names = ", ".join(p.name for p in files[:5]) or "no files"
        raise DataError(f"dataset {name!r}: {where} must hold files of one kind ({', '.join(READERS)}); found {names}")
    return str(kinds.pop())


def dataset_names(dataset_dir: str | Path | None) -> list[str]:
    """Every name ``data.dataset`` accepts without a path: the bundled sets, then ``dataset_dir``'s
    ``dataset_info.json`` entries."""
    folder = registry_folder(dataset_dir)
    registry = _load_registry(folder) if folder is not None else {}
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


def _resolve_one(name: str, registry: dict[str, Any], folder: Path, online: bool = False) -> DatasetSource:
    if name in registry:
        return _from_entry(name, registry[name], folder)
    if online and name not in BUILTIN_DATASETS and not Path(name).expanduser().exists():
        # LLaMA-Factory's dataset_dir ONLINE: the name is a hub dataset repository.
        entry = {"ms_hub_url" if env_flag("USE_MODELSCOPE_HUB") else "hf_hub_url": name}
        return _from_entry(name, entry, folder, where=f"data.dataset {name!r} (dataset_dir ONLINE)")
    if name in BUILTIN_DATASETS:
        return DatasetSource(name, BUILTIN_DATASETS[name])
    if _is_uri(name) or _is_glob(name):
        return _pattern_source(name)
    path = Path(name).expanduser()
    if path.suffix in READERS or path.is_dir():
        if not path.exists():
            raise DataError(f"data.dataset {name!r}: file not found (resolved to {_absolute(path)})")
        return DatasetSource(name, _absolute(path), reader=_reader_for(name, path))
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


def _from_entry(name: str, entry: dict[str, Any], folder: Path, where: str | None = None) -> DatasetSource:
    """Validate a registry entry once, then locate its files (on disk, or in a hub cache)."""
    where = where or f"{folder / _REGISTRY_FILE} entry {name!r}"
    unknown = sorted(set(entry) - _ENTRY_KEYS)
    if unknown:
        raise DataError(f"{where}: keys {unknown} are not supported (known: {', '.join(sorted(_ENTRY_KEYS))})")
    formatting = entry.get("formatting", "alpaca")
    if formatting not in FORMATTINGS:
        raise DataError(f"{where}: formatting {formatting!r} is unknown; use one of {', '.join(FORMATTINGS)}")
    columns = _checked_keys(entry.get("columns", {}), _COLUMN_KEYS, f"{where}: columns")
    tags = _checked_keys(entry.get("tags", {}), _TAG_KEYS, f"{where}: tags")
    choice = _Choice.of(entry, where)
    located = _LOCATORS[load_from(entry, where)](name, entry, folder, where, choice)
    return DatasetSource(
        name, located.path, formatting, columns, tags, located.reader, ranking=bool(entry.get("ranking")),
        files=tuple(str(f) for f in located.files), num_samples=choice.num_samples, extensions=located.extensions,
        media_dir=str(folder),
    )  # fmt: skip


def load_from(entry: Mapping[str, Any], where: str) -> str:
    """Where an entry's rows come from: its explicit ``load_from``, else LLaMA-Factory's choice: a hub
    URL first (ModelScope's when ``USE_MODELSCOPE_HUB=1`` or the only one, OpenMind's likewise with
    ``USE_OPENMIND_HUB=1``), then ``script_url``, ``cloud_file_name``, ``file_name``."""
    if "load_from" in entry:
        choice = entry["load_from"]
        if choice not in LOAD_FROM:
            raise DataError(f"{where}: load_from {choice!r} is unknown; use one of {', '.join(LOAD_FROM)}")
        if LOAD_FROM[choice] not in entry:
            raise DataError(f"{where}: load_from {choice!r} reads {LOAD_FROM[choice]!r}, which the entry does not set")
        return str(choice)
    has = {kind for kind, key in LOAD_FROM.items() if key in entry}
    if "ms_hub" in has and (env_flag("USE_MODELSCOPE_HUB") or "hf_hub" not in has):
        return "ms_hub"
    if "om_hub" in has and (env_flag("USE_OPENMIND_HUB") or "hf_hub" not in has):
        return "om_hub"
    for kind in ("hf_hub", "script", "cloud_file", "file"):
        if kind in has:
            return kind
    raise DataError(f"{where}: name the data with file_name (or hf_hub_url, ms_hub_url, script_url, cloud_file_name)")


_TRUE = frozenset({"1", "true", "yes", "on", "y"})
"""Values that turn an environment switch on (any case), as ``raytune_ft.models`` reads its switches."""


def env_flag(*names: str) -> bool:
    """Whether an environment switch is on: the first of ``names`` that is set decides (``env_flag(
    "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")`` reads the older name only when the newer one is unset,
    as huggingface_hub does). The data layer reads every switch through this."""
    value = next((os.environ[name] for name in names if os.environ.get(name)), "")
    return value.strip().lower() in _TRUE


@dataclass(frozen=True)
class _Choice:
    """An entry's ``subset``, ``split``, ``folder`` and ``num_samples``, checked."""

    subset: str | None = None
    split: str = "train"
    folder: str | None = None
    num_samples: int | None = None

    @classmethod
    def of(cls, entry: Mapping[str, Any], where: str) -> _Choice:
        for key in ("subset", "split", "folder"):
            if key in entry and (not isinstance(entry[key], str) or not entry[key].strip()):
                raise DataError(f"{where}: {key} must be a non-empty string, got {entry[key]!r}")
        samples = entry.get("num_samples")
        if samples is not None and (isinstance(samples, bool) or not isinstance(samples, int) or samples < 1):
            raise DataError(f"{where}: num_samples must be a whole number of rows >= 1, got {samples!r}")
        return cls(entry.get("subset"), entry.get("split", "train"), entry.get("folder"), samples)

    @property
    def picks_files(self) -> bool:
        """Whether the entry chooses files inside a folder or repository (else: every file)."""
        return self.subset is not None or self.folder is not None or self.split != "train"


@dataclass(frozen=True)
class _Located:
    path: Path | str
    reader: str
    files: list[Path] = field(default_factory=list)
    extensions: tuple[str, ...] | None = None


def _local_files(name: str, entry: dict[str, Any], folder: Path, where: str, choice: _Choice) -> _Located:
    path = _absolute(folder / entry["file_name"])
    if not path.exists():
        raise DataError(f"{where}: file_name {entry['file_name']!r} not found (resolved to {path})")
    if not choice.picks_files:
        return _Located(path, _reader_for(name, path))
    if path.is_file():
        raise DataError(
            f"{where}: subset, split and folder choose files inside a folder, but file_name {entry['file_name']!r} "
            "is one file (all of it is split 'train'); drop those keys or point file_name at a folder"
        )
    return _chosen(name, path, _select(path, where, choice))


def _hub_files(name: str, entry: dict[str, Any], folder: Path, where: str, choice: _Choice) -> _Located:
    from .hub import hub_files

    hub = load_from(entry, where)
    files = hub_files(hub, entry[LOAD_FROM[hub]], where, choice.subset, choice.split, choice.folder)
    return _chosen(name, _common_folder(files), files)


def _script_files(name: str, entry: dict[str, Any], folder: Path, where: str, choice: _Choice) -> _Located:
    """A ``script_url`` folder: its data files are read as a hub repository's; a loading script is not run."""
    path = _absolute(folder / entry["script_url"])
    if not path.is_dir():
        raise DataError(f"{where}: script_url {entry['script_url']!r} is not a folder (resolved to {path})")
    from .layout import data_files

    if not data_files(path):
        raise DataError(
            f"{where}: {path} holds no data file, only a loading script; dataset scripts are not run (the datasets "
            "library no longer runs them either). Run the script once where it works, save the rows as .jsonl or "
            '.parquet files in that folder, or point "file_name" at them'
        )
    return _chosen(name, path, _select(path, where, choice))


def _cloud_files(name: str, entry: dict[str, Any], folder: Path, where: str, choice: _Choice) -> _Located:
    """``cloud_file_name``: a JSON/JSON lines file in object storage (s3://, gs://), or a folder of them."""
    uri = str(entry["cloud_file_name"])
    if not _is_uri(uri):
        raise DataError(f"{where}: cloud_file_name {uri!r} must be a URI such as s3://bucket/data.jsonl")
    if choice.picks_files:
        raise DataError(f"{where}: subset, split and folder do not apply to cloud_file_name")
    if Path(uri.split("?", 1)[0]).suffix in (".json", ".jsonl"):
        return _Located(uri, "json")
    return _Located(uri.rstrip("/"), "json", extensions=("json", "jsonl"))


def _no_openmind(name: str, entry: dict[str, Any], folder: Path, where: str, choice: _Choice) -> _Located:
    raise DataError(
        f"{where}: om_hub_url (the OpenMind hub) is not supported. Add an hf_hub_url or ms_hub_url for the same "
        "dataset (and unset USE_OPENMIND_HUB), or download its files and set file_name"
    )


def _select(path: Path, where: str, choice: _Choice) -> list[Path]:
    from .layout import select_files

    return select_files(path, where, choice.subset, choice.split, choice.folder)


def _chosen(name: str, path: Path, files: list[Path]) -> _Located:
    return _Located(path, _one_reader(name, files, f"the files chosen from {path}"), files)


def _absolute(path: Path) -> Path:
    # Not resolve(): a hub cache's files are symlinks to blobs, whose names have no extension.
    return Path(os.path.abspath(path))


def _common_folder(files: list[Path]) -> Path:
    return Path(os.path.commonpath([str(f.parent) for f in files]))


_LOCATORS = {
    "file": _local_files, "hf_hub": _hub_files, "ms_hub": _hub_files, "script": _script_files,
    "cloud_file": _cloud_files, "om_hub": _no_openmind,
}  # fmt: skip


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
    """Refuse datasets that do not fit the stage's row format, before any row is read: pairs
    (``ranking``) train ``rm``/``dpo`` only, those stages need pairs, and .txt files are ``pt`` text."""
    for source in sources:
        if source.reader == "text" and rows != "pt":
            raise DataError(
                f"dataset {source.name!r} is plain text (.txt, one row per line): train it with method.stage pt"
            )
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
