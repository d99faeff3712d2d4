"""Hub model ids resolved to local snapshot folders: the Hugging Face Hub and ModelScope.

A Hub id names a moving target (``main``), so the driver pins it once (``pin``): a Hugging Face revision
becomes the commit it points to, and workers, replicas, restarts and checkpoints all receive
``org/name@<commit>``, the same weights on every node. A node fetches a snapshot at most once: the
workers on it take one file lock per repository in the cache and look again once they hold it; a snapshot
counts only when it is complete (huggingface_hub checks its file listing; ModelScope downloads are marked when
they finish). With ``HF_HUB_OFFLINE=1`` (for ModelScope too) nothing is downloaded or locked, and a model
missing from the cache is one error that names the command which fills it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, Protocol

from raytune_ft.config import InputError

__all__ = [
    "COMPLETE",
    "HUBS",
    "MODELSCOPE_ENV",
    "MODELSCOPE_PREFIX",
    "HubModel",
    "ModelSourceError",
    "hub_model",
    "is_offline",
    "pin",
    "snapshot",
]

MODELSCOPE_PREFIX = "modelscope:"
MODELSCOPE_ENV = "USE_MODELSCOPE_HUB"
"""LLaMA-Factory's switch: plain ``org/name`` ids come from ModelScope instead of the Hugging Face Hub."""

_ID = re.compile(r"^(?P<repo>[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*)(?:@(?P<revision>[^\s@]+))?$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
COMPLETE = ".raytune_ft-complete"
"""Written into a ModelScope snapshot folder once our download of it has finished."""
_PARTIAL = ("*.incomplete", "*.parallel_tmp")  # modelscope's files in flight
_TRUE = {"1", "true", "yes", "on", "y"}

HubName = Literal["huggingface", "modelscope"]


class ModelSourceError(InputError):
    """A model source that cannot be resolved to a local folder."""


@dataclass(frozen=True)
class HubModel:
    hub: HubName
    repo: str
    """``org/name``."""
    revision: str | None = None
    """Branch, tag or commit; None for the hub's default branch."""

    @property
    def source(self) -> str:
        """How a config names it: ``org/name[@rev]``, with ``modelscope:`` in front for ModelScope."""
        prefix = MODELSCOPE_PREFIX if self.hub == "modelscope" else ""
        return prefix + self.repo + (f"@{self.revision}" if self.revision else "")

    @property
    def pinned(self) -> bool:
        """Whether the revision is fixed: a commit on the Hugging Face Hub, any named one on ModelScope."""
        return self.revision is not None and (self.hub == "modelscope" or bool(_COMMIT.match(self.revision)))


def is_offline() -> bool:
    """``HF_HUB_OFFLINE=1`` (or ``TRANSFORMERS_OFFLINE=1``): read the caches only, of both hubs."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.strip().lower() in _TRUE


def hub_model(source: str) -> HubModel | None:
    """The Hub id ``source`` names, or None (``builtin:``, a path, an existing folder).

    As transformers does, an existing local folder wins over a Hub id of the same spelling.
    """
    if source.startswith(MODELSCOPE_PREFIX):
        return _parsed("modelscope", source.removeprefix(MODELSCOPE_PREFIX), source)
    if Path(source).expanduser().is_dir() or source.startswith((".", "/", "~")) or ":" in source:
        return None
    hub: HubName = "modelscope" if os.environ.get(MODELSCOPE_ENV, "").strip().lower() in _TRUE else "huggingface"
    return _parsed(hub, source, None)


def _parsed(hub: HubName, text: str, given: str | None) -> HubModel | None:
    match = _ID.match(text)
    if match is None:
        if given is not None:  # said modelscope: but is not an id
            raise ModelSourceError(f"model source {given!r}: expected modelscope:ORG/NAME or modelscope:ORG/NAME@REV")
        return None
    revision = match["revision"]
    if hub == "modelscope" and revision == "main":  # LLaMA-Factory's default revision, ModelScope's name for it
        revision = "master"
    return HubModel(hub, match["repo"], revision)


def pin(model: HubModel, cache_dir: str | None = None) -> HubModel:
    """``model`` at a fixed revision: on the Hugging Face Hub the commit its branch or tag points to
    (asked of the Hub, or read from the cache's ``refs/`` offline); on ModelScope the named revision
    (``master`` by default), as its cache keys snapshots by revision name."""
    if model.pinned:
        return model
    return HUBS[model.hub].pin(model, cache_dir)


def snapshot(model: HubModel, cache_dir: str | None = None) -> Path:
    """The local folder of ``model`` (pinned first if it is not), downloaded at most once per node.

    A complete snapshot is read without locking, and offline a missing one is the clear error before any lock
    file is written: a read-only shared cache works either way.
    """
    hub = HUBS[model.hub]
    model = pin(model, cache_dir)
    folder = hub.cached(model, cache_dir)
    if folder is not None:
        return folder
    if is_offline():
        raise _missing_error(model, cache_dir, "HF_HUB_OFFLINE=1 keeps raytune_ft from downloading it")
    with _locked(hub.lock_file(model, cache_dir)):
        folder = hub.cached(model, cache_dir)  # another worker of this node may have fetched it meanwhile
        if folder is not None:
            return folder
        return hub.download(model, cache_dir)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if the process dies
        yield


def _missing_error(model: HubModel, cache_dir: str | None, reason: str) -> ModelSourceError:
    """The one error for a model this node cannot get: which, from where, why, and the command that fetches it."""
    hub = HUBS[model.hub]
    revision = model.revision or hub.default_revision
    return ModelSourceError(
        f"model {model.repo!r} (revision {revision}) is not in the {hub.title} cache {hub.cache_root(cache_dir)}, and "
        f"{reason}. Download it where the network reaches the hub, into the cache this job reads (model.cache_dir, "
        f"else {hub.cache_variable}) on every node, or into one folder all nodes share: {hub.command(model, cache_dir)}"
    )


class Hub(Protocol):
    title: str
    default_revision: str
    cache_variable: str

    def pin(self, model: HubModel, cache_dir: str | None) -> HubModel: ...

    def cached(self, model: HubModel, cache_dir: str | None) -> Path | None:
        """The complete cached snapshot of a pinned ``model``, without touching the network or writing; None
        for a missing or unfinished one."""
        ...

    def download(self, model: HubModel, cache_dir: str | None) -> Path: ...

    def lock_file(self, model: HubModel, cache_dir: str | None) -> Path: ...

    def cache_root(self, cache_dir: str | None) -> Path: ...

    def command(self, model: HubModel, cache_dir: str | None) -> str:
        """The shell command that puts ``model`` into the cache."""
        ...


class HuggingFace:
    """``huggingface_hub``'s cache: ``models--org--name/{blobs, snapshots/<commit>, refs/<branch>}``."""

    title = "Hugging Face"
    default_revision = "main"
    cache_variable = "HF_HUB_CACHE"

    def pin(self, model: HubModel, cache_dir: str | None) -> HubModel:
        revision = model.revision or self.default_revision
        reason = "HF_HUB_OFFLINE=1 keeps raytune_ft from asking the Hub which commit it is"
        if not is_offline():
            commit, reason = self._ask_hub(model, revision)
            if commit is not None:
                return replace(model, revision=commit)
        commit = self._cached_ref(model, revision, cache_dir)
        if commit is None:
            raise _missing_error(replace(model, revision=revision), cache_dir, reason)
        return replace(model, revision=commit)

    def _ask_hub(self, model: HubModel, revision: str) -> tuple[str | None, str]:
        """(the commit, None) from the Hub, or (None, why not) when it cannot be reached."""
        from huggingface_hub import HfApi
        from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

        try:
            sha = HfApi().repo_info(model.repo, revision=revision).sha
        except GatedRepoError:
            raise ModelSourceError(
                f"model {model.repo!r} is gated on the Hugging Face Hub: accept its terms on its page and set "
                "HF_TOKEN (or run `hf auth login`) on the driver and every node"
            ) from None
        except RevisionNotFoundError:
            raise ModelSourceError(f"model {model.repo!r}: the Hub has no revision {revision!r}") from None
        except RepositoryNotFoundError:
            raise ModelSourceError(
                f"model {model.repo!r}: no such repository on the Hugging Face Hub (or it is private: set HF_TOKEN)"
            ) from None
        except Exception as err:  # no route, timeout, Hub down: huggingface_hub falls back to its cache too
            return None, f"the Hub could not be reached ({type(err).__name__})"
        if sha is None:
            return None, "the Hub returned no commit for it"
        return sha, ""

    def _cached_ref(self, model: HubModel, revision: str, cache_dir: str | None) -> str | None:
        if _COMMIT.match(revision):
            return revision
        ref = self._storage(model, cache_dir) / "refs" / revision
        commit = ref.read_text().strip() if ref.is_file() else ""
        return commit if _COMMIT.match(commit) else None

    def cached(self, model: HubModel, cache_dir: str | None) -> Path | None:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError

        cache = self.cache_root(cache_dir)
        try:  # also checks the snapshot against the cached file listing, so a half download does not count
            folder = snapshot_download(model.repo, revision=model.revision, cache_dir=cache, local_files_only=True)
        except LocalEntryNotFoundError:
            return None
        return Path(folder)

    def download(self, model: HubModel, cache_dir: str | None) -> Path:
        from huggingface_hub import snapshot_download

        try:
            return Path(snapshot_download(model.repo, revision=model.revision, cache_dir=self.cache_root(cache_dir)))
        except Exception as err:
            raise _missing_error(model, cache_dir, f"downloading it failed ({type(err).__name__}: {err})") from None

    def lock_file(self, model: HubModel, cache_dir: str | None) -> Path:
        # Beside huggingface_hub's own per-file locks, where cache scans expect lock files.
        return self.cache_root(cache_dir) / ".locks" / f"{self._folder_name(model)}.raytune_ft.lock"

    def cache_root(self, cache_dir: str | None) -> Path:
        """``cache_dir``, else the cache the environment names now: huggingface_hub reads ``HF_HUB_CACHE`` and
        ``HF_HOME`` once, at import, which is too early for a worker whose environment is set later."""
        if cache_dir:
            return Path(cache_dir).expanduser()
        if os.environ.get("HF_HUB_CACHE"):
            return Path(os.environ["HF_HUB_CACHE"]).expanduser()
        if os.environ.get("HF_HOME"):
            return Path(os.environ["HF_HOME"]).expanduser() / "hub"
        from huggingface_hub import constants

        return Path(constants.HF_HUB_CACHE).expanduser()

    def command(self, model: HubModel, cache_dir: str | None) -> str:
        revision = model.revision or self.default_revision
        where = f" --cache-dir {cache_dir}" if cache_dir else ""
        return f"hf download {model.repo} --revision {revision}{where}"

    def _storage(self, model: HubModel, cache_dir: str | None) -> Path:
        return self.cache_root(cache_dir) / self._folder_name(model)

    @staticmethod
    def _folder_name(model: HubModel) -> str:
        return "models--" + model.repo.replace("/", "--")


class ModelScope:
    """The ``modelscope`` package's cache: ``models/org--name/snapshots/<revision>/`` (and the layouts of
    its older releases, which it still finds). It keys snapshots by revision name, not commit.

    modelscope downloads into the very folder its offline lookup returns as soon as it holds any file, and
    keeps no listing to check it against, so a download of ours is marked complete when it ends (``COMPLETE``
    in the snapshot). An unmarked folder (``modelscope download`` put it there, or a download stopped) is
    trusted where nothing of ours can be writing it, offline or in a cache this process cannot write, once no
    partial file of modelscope's is left in it; online it is downloaded again under the lock, which checks
    every file against the hub's listing, fetches what is missing, and marks it.
    """

    title = "ModelScope"
    default_revision = "master"
    cache_variable = "MODELSCOPE_CACHE"

    def pin(self, model: HubModel, cache_dir: str | None) -> HubModel:
        return replace(model, revision=model.revision or self.default_revision)

    def cached(self, model: HubModel, cache_dir: str | None) -> Path | None:
        folder = self._folder(model, cache_dir)
        if folder is None or (folder / COMPLETE).is_file():
            return folder
        trusted = is_offline() or not os.access(folder, os.W_OK)
        return folder if trusted and not _partial_files(folder) else None

    def _folder(self, model: HubModel, cache_dir: str | None) -> Path | None:
        """The folder modelscope's offline lookup gives (complete or not), or None."""
        snapshot_download = _modelscope_download()
        from modelscope_hub.errors import CacheError

        cache = str(self.cache_root(cache_dir))  # its own default is read once per process
        try:
            folder = snapshot_download(model.repo, revision=model.revision, cache_dir=cache, local_files_only=True)
        except CacheError:
            return None
        return Path(folder)

    def download(self, model: HubModel, cache_dir: str | None) -> Path:
        snapshot_download = _modelscope_download()
        try:
            folder = Path(
                snapshot_download(model.repo, revision=model.revision, cache_dir=str(self.cache_root(cache_dir)))
            )
        except Exception as err:
            raise _missing_error(model, cache_dir, f"downloading it failed ({type(err).__name__}: {err})") from None
        (folder / COMPLETE).touch()  # modelscope returns only once every file is there
        return folder

    def lock_file(self, model: HubModel, cache_dir: str | None) -> Path:
        # modelscope keeps its own lock files in <cache>/.lock, a folder its cache scans skip.
        return self.cache_root(cache_dir) / ".lock" / f"raytune_ft-models--{model.repo.replace('/', '--')}.lock"

    def cache_root(self, cache_dir: str | None) -> Path:
        default = os.environ.get("MODELSCOPE_CACHE") or Path.home() / ".cache" / "modelscope"
        return Path(cache_dir or default).expanduser()

    def command(self, model: HubModel, cache_dir: str | None) -> str:
        revision = model.revision or self.default_revision
        where = f" --cache-dir {cache_dir}" if cache_dir else ""
        return f"modelscope download {model.repo} --revision {revision}{where}"


def _partial_files(folder: Path) -> bool:
    """Whether ``folder`` holds a file modelscope is still writing, or left behind when its download stopped."""
    return any(next(folder.rglob(pattern), None) is not None for pattern in _PARTIAL)


def _modelscope_download() -> Any:
    """``modelscope``'s ``snapshot_download`` (imported on first use: the package takes seconds to import)."""
    try:
        from modelscope.hub.snapshot_download import snapshot_download
    except ImportError:
        raise ModelSourceError("ModelScope model ids need the modelscope package: pip install modelscope") from None
    return snapshot_download


HUBS: dict[HubName, Hub] = {"huggingface": HuggingFace(), "modelscope": ModelScope()}
"""Where each kind of Hub id resolves."""
