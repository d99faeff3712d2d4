"""Which files of a dataset repository hold a given subset and split, by the Hub's own rules.

A Hub dataset repository says where its rows are in the YAML header of its README.md
(``configs:``: one entry per subset, each mapping splits to path globs). Repositories without one
are read by convention: sharded ``data/{split}-00000-of-00001.parquet`` files, then a folder or file
name that carries the split's name (``train/``, ``dev.jsonl``), then every file as ``train``.
Choosing the files here, on the driver, lets our own readers stream exactly those files and lets
an unknown subset or split fail at once with the names that do exist.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from .sources import READERS, DataError

__all__ = ["data_files", "download_patterns", "read_configs", "select_files", "split_patterns"]

_IGNORED_FILES = {"README.md", "dataset_info.json", "dataset_infos.json", "dataset_dict.json", "state.json"}
_SPLIT_KEYWORDS = {
    "train": ("train", "training"),
    "validation": ("validation", "valid", "dev", "val"),
    "test": ("test", "testing", "eval", "evaluation"),
}
_SEP = r"[-._ 0-9]"
_SHARDED = re.compile(r"data/(?P<split>\w+)-\d{5}-of-\d{5}[^/]*\.[^/]+")


def data_files(root: Path) -> list[str]:
    """Readable data files under ``root`` (POSIX paths relative to it), hidden and ``__`` folders and
    the repository's metadata files left out, as the Hub leaves them out."""
    found = []
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if not path.is_file() or path.suffix not in READERS or relative.name in _IGNORED_FILES:
            continue
        if any(part.startswith((".", "__")) for part in relative.parts):
            continue
        found.append(relative.as_posix())
    return found


def select_files(
    root: Path, where: str, subset: str | None = None, split: str = "train", folder: str | None = None
) -> list[Path]:
    """The files of ``root`` that hold ``subset``'s ``split`` (``folder``: only files under it).

    The README's ``configs:`` decide when present and no ``folder`` is set (as the Hub loader does);
    otherwise the conventional layout under ``{subset}/{folder}/`` does.
    """
    files = data_files(root)
    configs = read_configs(root / "README.md", where)
    if configs and folder is None:
        chosen = _from_config(files, _pick_config(configs, subset, where), split, where)
    else:
        base = _base_folder(root, files, subset, folder, where)
        inside = [f[len(base) :] for f in files if f.startswith(base)]
        splits = split_patterns(inside)
        chosen = [base + f for f in _in_split(inside, splits, split, f"{where}: {base or root.name + '/'}")]
    if not chosen:
        raise DataError(f"{where}: no .json/.jsonl/.parquet/.csv/.txt/.arrow file holds split {split!r} in {root}")
    return [root / f for f in chosen]


def download_patterns(
    readme: Path, where: str, subset: str | None = None, split: str = "train", folder: str | None = None
) -> list[str]:
    """What to fetch of a repository whose README (only) is local: the chosen config's globs for
    ``split``, or every data file under ``{subset}/{folder}/`` (the split is chosen once they are here)."""
    configs = read_configs(readme, where)
    if configs and folder is None:
        globs = _config_globs(_pick_config(configs, subset, where), split, where)
        return [*globs, *(f"{g.rstrip('/')}/*" for g in globs)]  # a glob may name a folder
    base = "".join(f"{p.strip('/')}/" for p in (subset, folder) if p)
    return [f"{base}*{suffix}" for suffix in READERS]


def read_configs(readme: Path, where: str) -> list[dict[str, Any]]:
    """The ``configs:`` list of a dataset card's YAML header ([] without one)."""
    import yaml

    if not readme.is_file():
        return []
    text = readme.read_text(encoding="utf-8")
    match = re.match(r"---\s*\n(.*?)\n---\s*(\n|$)", text, re.DOTALL)
    if not match:
        return []
    try:
        header = yaml.safe_load(match.group(1)) or {}
    except yaml.YAMLError as err:
        raise DataError(f"{where}: the YAML header of {readme} does not parse ({err})") from None
    configs = header.get("configs", []) if isinstance(header, dict) else []
    if not isinstance(configs, list) or not all(isinstance(c, dict) for c in configs):
        raise DataError(f"{where}: {readme}: 'configs' must be a list of mappings with config_name and data_files")
    return configs


def _pick_config(configs: list[dict[str, Any]], subset: str | None, where: str) -> dict[str, Any]:
    names = [str(c.get("config_name", "default")) for c in configs]
    if subset is not None:
        if subset in names:
            return configs[names.index(subset)]
        close = difflib.get_close_matches(subset, names, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise DataError(f"{where}: subset {subset!r} is not among the repository's subsets ({', '.join(names)}).{hint}")
    default = [c for c in configs if c.get("default")] or [c for c in configs if c.get("config_name") == "default"]
    if default:
        return default[0]
    if len(configs) == 1:
        return configs[0]
    raise DataError(f'{where}: the repository has several subsets ({", ".join(names)}); choose one with "subset"')


def _from_config(files: list[str], config: Mapping[str, Any], split: str, where: str) -> list[str]:
    patterns = [_glob_regex(glob) for glob in _config_globs(config, split, where)]
    return [f for f in files if any(p.fullmatch(f) for p in patterns)]


def _config_globs(config: Mapping[str, Any], split: str, where: str) -> list[str]:
    """A config's globs for ``split``, relative to the repository root (its ``data_dir`` joined)."""
    name = config.get("config_name", "default")
    splits = _config_splits(config.get("data_files", "**"), f"{where}: subset {name!r}")
    if split not in splits:
        raise DataError(f"{where}: subset {name!r} has no split {split!r}; its splits: {', '.join(splits)}")
    base = str(config.get("data_dir", "")).strip("/")
    return [f"{base}/{p}" if base else p for p in splits[split]]


def _config_splits(data_files_spec: object, where: str) -> dict[str, list[str]]:
    """A config's ``data_files``: one glob or a list of them (all ``train``), or ``split``/``path`` pairs."""
    if isinstance(data_files_spec, str):
        return {"train": [data_files_spec]}
    if isinstance(data_files_spec, list) and all(isinstance(p, str) for p in data_files_spec):
        return {"train": list(data_files_spec)}
    if isinstance(data_files_spec, list) and all(isinstance(p, dict) for p in data_files_spec):
        splits = {}
        for item in data_files_spec:
            paths = item.get("path")
            if "split" not in item or not isinstance(paths, str | list):
                raise DataError(f"{where}: each data_files item needs a split and a path (a glob or a list of globs)")
            splits[str(item["split"])] = [paths] if isinstance(paths, str) else [str(p) for p in paths]
        return splits
    raise DataError(f"{where}: data_files must be a glob, a list of globs, or a list of split/path pairs")


def _base_folder(root: Path, files: list[str], subset: str | None, folder: str | None, where: str) -> str:
    """``{subset}/{folder}/`` as a path prefix: without ``configs:``, a subset is a top-level folder."""
    parts = [p.strip("/") for p in (subset, folder) if p]
    base = "".join(f"{p}/" for p in parts)
    if base and not any(f.startswith(base) for f in files):
        tops = sorted({f.split("/", 1)[0] for f in files if "/" in f})
        what = "subset" if subset and not folder else "folder"
        listing = f"its folders: {', '.join(tops)}" if tops else "it has no folders"
        raise DataError(
            f"{where}: {what} {base.rstrip('/')!r} holds no data file in {root} (the README has no configs; {listing})"
        )
    return base


def split_patterns(files: list[str]) -> dict[str, list[str]]:
    """Split name -> files, by the Hub's conventional layouts, tried in order: sharded
    ``data/{split}-NNNNN-of-NNNNN.*`` files, a folder named for the split, a file named for it,
    and last every file as ``train``."""
    sharded: dict[str, list[str]] = {}
    for f in files:
        if match := _SHARDED.fullmatch(f):
            sharded.setdefault(match["split"], []).append(f)
    if sharded:
        return sharded
    for in_folder in (True, False):
        named = {
            split: [f for f in files if _names_split(f, keywords, in_folder)]
            for split, keywords in _SPLIT_KEYWORDS.items()
        }
        if any(named.values()):
            return {split: found for split, found in named.items() if found}
    return {"train": list(files)} if files else {}


def _names_split(file: str, keywords: tuple[str, ...], in_folder: bool) -> bool:
    path = PurePosixPath(file)
    names = path.parts[:-1] if in_folder else (path.name,)
    for name in names:
        for keyword in keywords:
            # The keyword as a whole word of the name: train/, train-00.jsonl, my_train.json, dev.csv
            if re.search(rf"(^|{_SEP}){re.escape(keyword)}({_SEP}|$)", name):
                return True
    return False


def _in_split(files: list[str], splits: dict[str, list[str]], split: str, where: str) -> list[str]:
    if split not in splits:
        found = ", ".join(splits) or "none: no data files"
        raise DataError(f"{where} has no split {split!r}; splits found by the file layout: {found}")
    return splits[split]


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """The Hub's (fsspec's) glob: ``*`` stays inside one path segment, ``**`` crosses segments, and a
    pattern naming a folder takes the files under it."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[" and (end := pattern.find("]", i + 1)) > i:
            out.append("[" + pattern[i + 1 : end].replace("!", "^", 1) + "]")
            i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out) + "(?:/.*)?")
