"""Hub caches laid out exactly as ``huggingface_hub`` and ``modelscope`` lay out a downloaded model, built
from a local folder, so that Hub ids resolve offline in tests (and an offline cache of a real model id can
be seeded from the builtin model).

    from tests.hub_cache import hf_cache_entry
    hf_cache_entry(cache, "HuggingFaceTB/SmolLM2-135M-Instruct", builtin_dir)   # then HF_HUB_CACHE=cache

The Hugging Face layout (huggingface_hub 1.x/2.x): ``models--ORG--NAME/blobs/<etag>`` (the sha256 of an LFS
file, the git blob sha1 of any other), ``snapshots/<commit>/<path>`` relative symlinks to the blobs,
``refs/<branch>`` holding the commit, and ``trees/<commit>.json``, the file listing offline loads check a
snapshot against. ModelScope (modelscope 1.40): ``models/ORG--NAME/snapshots/<revision>/<path>``, plain files.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = ["LFS_SUFFIXES", "dataset_cache", "hf_cache_entry", "hf_storage", "modelscope_cache_entry"]

LFS_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth", ".model", ".msgpack", ".h5")
"""Files the Hub keeps in LFS (its .gitattributes), whose cache blobs are named by sha256."""
_LFS_SIZE = 10 * 1024 * 1024  # larger files go to LFS whatever their name


def hf_storage(cache: Path, repo: str, repo_type: str = "model") -> Path:
    """The folder of ``repo`` (a ``model`` or ``dataset`` repository) in a Hugging Face cache."""
    return Path(cache) / (f"{repo_type}s--" + repo.replace("/", "--"))


def hf_cache_entry(
    cache: Path,
    repo: str,
    folder: Path,
    *,
    commit: str | None = None,
    refs: Iterable[str] = ("main",),
    exclude: Iterable[str] = (),
    repo_type: str = "model",
) -> Path:
    """Store ``folder``'s files in the Hugging Face cache ``cache`` as a download of ``repo`` at ``commit``
    (default: a hash of the contents), with each branch of ``refs`` pointing to it; files named in
    ``exclude`` are left out. Returns the snapshot folder."""
    files = sorted(p for p in Path(folder).rglob("*") if p.is_file() and p.name not in set(exclude))
    listing = {str(p.relative_to(folder)): _entry(p) for p in files}
    commit = commit or hashlib.sha1(json.dumps(listing, sort_keys=True).encode()).hexdigest()
    storage = hf_storage(cache, repo, repo_type)
    snapshot = storage / "snapshots" / commit
    for path, (etag, _) in listing.items():
        blob = storage / "blobs" / etag
        blob.parent.mkdir(parents=True, exist_ok=True)
        if not blob.exists():
            shutil.copyfile(Path(folder) / path, blob)
        link = snapshot / path
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.is_symlink():
            link.symlink_to(os.path.relpath(blob, link.parent))
    for ref in refs:
        (storage / "refs" / ref).parent.mkdir(parents=True, exist_ok=True)
        (storage / "refs" / ref).write_text(commit)  # no newline, as huggingface_hub writes it
    trees = storage / "trees"
    trees.mkdir(parents=True, exist_ok=True)
    tree = {"format_version": 1, "files": {path: entry for path, (_, entry) in sorted(listing.items())}}
    (trees / f"{commit}.json").write_text(json.dumps(tree, indent=1))
    return snapshot


def dataset_cache(cache: Path, repo: str, folder: Path, **kwargs: Any) -> Path:
    """``hf_cache_entry`` of a dataset repository (``datasets--ORG--NAME``), as ``hf download --repo-type
    dataset`` stores it. Returns the snapshot folder."""
    return hf_cache_entry(cache, repo, folder, repo_type="dataset", **kwargs)


def modelscope_cache_entry(
    cache: Path, repo: str, folder: Path, revision: str = "master", repo_type: str = "model"
) -> Path:
    """Store ``folder``'s files in the ModelScope cache ``cache`` as ``modelscope download`` stores ``repo``
    (a ``model`` or ``dataset`` repository) at ``revision``. Returns the snapshot folder."""
    snapshot = Path(cache) / f"{repo_type}s" / repo.replace("/", "--") / "snapshots" / revision
    shutil.copytree(folder, snapshot, dirs_exist_ok=True)
    return snapshot


def _entry(path: Path) -> tuple[str, dict[str, object]]:
    """(the blob's name in the cache, the file's entry in the tree listing)."""
    data = path.read_bytes()
    if path.suffix in LFS_SUFFIXES or len(data) > _LFS_SIZE:
        sha256 = hashlib.sha256(data).hexdigest()
        pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {len(data)}\n".encode()
        return sha256, {"size": len(data), "blob_id": _git_sha1(pointer), "lfs_sha256": sha256, "lfs_size": len(data)}
    blob_id = _git_sha1(data)
    return blob_id, {"size": len(data), "blob_id": blob_id}


def _git_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
