"""Dataset repositories from the Hugging Face Hub and ModelScope, read through the hubs' own caches.

``hf_hub_url`` / ``ms_hub_url`` entries (and ``dataset_dir: REMOTE:org/repo``) name a repository,
not files. On the driver the repository's README is fetched first, which pins the revision; then
only the files of the chosen subset and split are fetched, and our own readers stream them. With
``HF_HUB_OFFLINE=1`` or ``TRANSFORMERS_OFFLINE=1`` (ModelScope's cache too) nothing is downloaded: the
cached snapshot is used, and a repository missing from the cache is one error that says which command
fills the cache.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .layout import download_patterns, select_files
from .sources import DataError, env_flag

__all__ = ["HUB_NAMES", "dataset_snapshot", "hf_cache_dir", "hub_files", "is_offline", "split_revision"]

HUB_NAMES = {"hf_hub": "the Hugging Face Hub", "ms_hub": "ModelScope"}
_PACKAGES = {"hf_hub": "huggingface_hub", "ms_hub": "modelscope"}
"""The pip package that brings each hub's client (``modelscope`` brings ``modelscope_hub``)."""


def is_offline() -> bool:
    """``HF_HUB_OFFLINE=1`` (or ``TRANSFORMERS_OFFLINE=1``): read hub datasets from the local caches only
    (ModelScope's too); the same rule as model sources."""
    return env_flag("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


def split_revision(repo: str) -> tuple[str, str | None]:
    """``org/name@revision`` -> (``org/name``, revision); None for the default branch."""
    name, _, revision = repo.partition("@")
    return name, revision or None


def hub_files(
    hub: str, repo: str, where: str, subset: str | None = None, split: str = "train", folder: str | None = None
) -> list[Path]:
    """Local paths of the files that hold ``subset``'s ``split`` of a hub dataset repository."""
    name, revision = split_revision(repo)
    # The README comes first (it pins a Hugging Face revision to its commit and holds the subsets); then
    # only the chosen files, which offline also checks that the cache holds all of them.
    readme = dataset_snapshot(hub, name, revision, where, patterns=["README.md"])
    pinned = readme.name if hub == "hf_hub" else revision
    patterns = download_patterns(readme / "README.md", where, subset, split, folder)
    root = dataset_snapshot(hub, name, pinned, where, patterns=["README.md", *patterns])
    return select_files(root, where, subset, split, folder)


def dataset_snapshot(hub: str, repo: str, revision: str | None, where: str, patterns: list[str] | None) -> Path:
    """The local snapshot folder of a dataset repository holding at least ``patterns`` (all files when
    None), from the cache when offline."""
    offline = is_offline()
    try:
        if hub == "hf_hub":
            return _hf_snapshot(repo, revision, patterns, offline)
        return _ms_snapshot(repo, revision, patterns, offline)
    except ImportError:
        raise DataError(f"{where}: reading {HUB_NAMES[hub]} datasets needs `pip install {_PACKAGES[hub]}`") from None
    except Exception as err:  # not cached, offline, unknown repo, no access: the same way out
        raise DataError(_not_available(hub, repo, revision, where, err, offline)) from None


def _hf_snapshot(repo: str, revision: str | None, patterns: list[str] | None, offline: bool) -> Path:
    from huggingface_hub import snapshot_download

    folder = snapshot_download(
        repo, repo_type="dataset", revision=revision, allow_patterns=patterns, local_files_only=offline,
        cache_dir=hf_cache_dir(),
    )  # fmt: skip
    return Path(str(folder))


def hf_cache_dir() -> str:
    """The Hugging Face cache, read from the environment now (huggingface_hub reads it once, at import)."""
    from huggingface_hub import constants

    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return os.path.join(os.environ["HF_HOME"], "hub")
    return str(constants.HF_HUB_CACHE)


def _ms_snapshot(repo: str, revision: str | None, patterns: list[str] | None, offline: bool) -> Path:
    # modelscope's own dataset_snapshot_download delegates to this function of its hub client, but
    # does not pass local_files_only through.
    from modelscope_hub.compat import dataset_snapshot_download

    kwargs: dict[str, Any] = {"allow_patterns": patterns} if patterns else {}
    # Its client reads MODELSCOPE_CACHE once per process; name the cache as the environment says now.
    cache = str(ms_cache_dir())
    return Path(dataset_snapshot_download(repo, revision=revision, local_files_only=offline, cache_dir=cache, **kwargs))


def ms_cache_dir() -> Path:
    """ModelScope's cache: ``MODELSCOPE_CACHE``, else ``~/.cache/modelscope``."""
    return Path(os.environ.get("MODELSCOPE_CACHE") or Path.home() / ".cache" / "modelscope").expanduser()


def _not_available(hub: str, repo: str, revision: str | None, where: str, err: Exception, offline: bool) -> str:
    shown = revision or ("main" if hub == "hf_hub" else "master")
    if hub == "hf_hub":
        cache, variables = hf_cache_dir(), "HF_HOME / HF_HUB_CACHE"
        command = f"hf download {repo} --repo-type dataset" + (f" --revision {revision}" if revision else "")
    else:
        cache = str(ms_cache_dir())
        variables = "MODELSCOPE_CACHE"
        command = f"modelscope download --repo-type dataset {repo}" + (f" --revision {revision}" if revision else "")
    reason = (
        "offline mode (HF_HUB_OFFLINE=1 or TRANSFORMERS_OFFLINE=1) forbids downloading it"
        if offline
        else f"it could not be fetched ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
    )
    return (
        f"{where}: dataset {repo!r} (revision {shown}) from {HUB_NAMES[hub]} is not (wholly) in the cache "
        f"({cache}) and {reason}. Pre-download it where the network reaches the hub, into the cache this job uses "
        f"({variables}): {command}"
    )
