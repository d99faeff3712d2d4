"""Where training rows come from: bundled dataset names or JSON/JSONL paths.

Resolution happens on the driver before anything is read, so a typo in a dataset name fails in
a second with the list of valid names instead of deep inside a Ray task.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path

__all__ = ["BUILTIN_DATASETS", "DataError", "DatasetSource", "resolve_datasets"]

_BUILTIN_DIR = Path(__file__).parent / "builtin"

BUILTIN_DATASETS: dict[str, Path] = {
    "identity": _BUILTIN_DIR / "identity.jsonl",
    "alpaca_300": _BUILTIN_DIR / "alpaca_300.jsonl",
}
_SUFFIXES = (".json", ".jsonl")


class DataError(ValueError):
    """Bad dataset input; the message names the dataset, file or row and what to do."""


@dataclass(frozen=True)
class DatasetSource:
    name: str
    """What the user wrote in ``data.dataset``."""
    path: Path
    """The file that holds the rows."""


def resolve_datasets(names: list[str]) -> list[DatasetSource]:
    """Map every ``data.dataset`` entry to a readable file, or raise ``DataError``."""
    if not names:
        raise DataError("data.dataset is empty: name at least one dataset (e.g. identity)")
    return [_resolve_one(name) for name in names]


def _resolve_one(name: str) -> DatasetSource:
    if name in BUILTIN_DATASETS:
        return DatasetSource(name, BUILTIN_DATASETS[name])
    path = Path(name).expanduser()
    if path.suffix in _SUFFIXES:
        if not path.is_file():
            raise DataError(f"data.dataset {name!r}: file not found (resolved to {path.resolve()})")
        return DatasetSource(name, path.resolve())
    close = difflib.get_close_matches(name, BUILTIN_DATASETS, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise DataError(
        f"data.dataset {name!r} is neither a bundled dataset ({', '.join(BUILTIN_DATASETS)}) nor a "
        f"path to a {'/'.join(_SUFFIXES)} file.{hint}"
    )
