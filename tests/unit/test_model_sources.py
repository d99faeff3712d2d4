"""Hub ids resolve offline through caches laid out as huggingface_hub and modelscope lay them out: the
driver pins a branch to its commit, a commit stays, a local folder wins over an id of the same spelling,
and a model missing from the cache is one error that says how to fetch it."""

from __future__ import annotations

import json
import threading
import time
import warnings
from pathlib import Path

import pytest
from hub_cache import hf_cache_entry, hf_storage, modelscope_cache_entry

from raytune_ft.config import ConfigWarning, ModelConfig
from raytune_ft.models import ModelSourceError, hub_model, pin_model_source, resolve_model, resolve_model_source
from raytune_ft.models.hub import HUBS, HubModel

REPO = "tiny-org/tiny-llama"
OLD, NEW = "a" * 40, "b" * 40


@pytest.fixture
def hf_cache(tmp_path: Path, tiny_model_dir: Path) -> Path:
    """A cache where ``main`` points at commit NEW, and commit OLD (the ``v1`` tag) is cached too."""
    cache = tmp_path / "hf"
    hf_cache_entry(cache, REPO, tiny_model_dir, commit=OLD, refs=("v1",))
    hf_cache_entry(cache, REPO, tiny_model_dir, commit=NEW, refs=("main",))
    return cache


def test_the_cache_fixture_is_what_huggingface_hub_reads(hf_cache: Path) -> None:
    from huggingface_hub import scan_cache_dir, snapshot_download

    (repo,) = scan_cache_dir(hf_cache).repos
    assert repo.repo_id == REPO and {r.commit_hash for r in repo.revisions} == {OLD, NEW}
    assert snapshot_download(REPO, cache_dir=hf_cache, local_files_only=True).endswith(NEW)
    config = hf_storage(hf_cache, REPO) / "snapshots" / NEW / "config.json"
    assert config.is_symlink() and json.loads(config.read_text())["model_type"] == "llama"


def test_ids_parse_and_an_existing_folder_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert hub_model("org/name") == HubModel("huggingface", "org/name")
    assert hub_model("org/name@v1.0") == HubModel("huggingface", "org/name", "v1.0")
    assert hub_model("modelscope:org/name") == HubModel("modelscope", "org/name")
    assert hub_model("modelscope:org/name@main") == HubModel("modelscope", "org/name", "master")
    assert hub_model("builtin:smollm2-135m-instruct") is None
    assert hub_model("./org/name") is None and hub_model("/models/x") is None and hub_model("a/b/c") is None
    monkeypatch.setenv("USE_MODELSCOPE_HUB", "1")
    assert hub_model("org/name") == HubModel("modelscope", "org/name")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "org" / "name").mkdir(parents=True)
    assert hub_model("org/name") is None


def test_the_driver_pins_a_branch_to_its_commit(hf_cache: Path) -> None:
    pinned = pin_model_source(ModelConfig(source=REPO, cache_dir=str(hf_cache)))
    assert pinned.source == f"{REPO}@{NEW}"
    assert pin_model_source(ModelConfig(source=f"{REPO}@v1", cache_dir=str(hf_cache))).source == f"{REPO}@{OLD}"
    same = ModelConfig(source=f"{REPO}@{OLD}", cache_dir=str(hf_cache))
    assert pin_model_source(same) == same  # a commit is already pinned
    assert resolve_model(pinned) == hf_storage(hf_cache, REPO) / "snapshots" / NEW
    # A worker resolving the pinned id keeps loading NEW after main has moved on.
    hf_cache_entry(hf_cache, REPO, hf_storage(hf_cache, REPO) / "snapshots" / OLD, commit="c" * 40)
    assert resolve_model(pinned).name == NEW
    assert resolve_model(ModelConfig(source=REPO, cache_dir=str(hf_cache))).name == "c" * 40


def test_an_unknown_revision_offline_is_one_clear_error(hf_cache: Path) -> None:
    with pytest.raises(ModelSourceError) as err:
        pin_model_source(ModelConfig(source=f"{REPO}@v2", cache_dir=str(hf_cache)))
    message = str(err.value)
    assert f"'{REPO}'" in message and "revision v2" in message and "HF_HUB_OFFLINE=1" in message
    assert f"hf download {REPO} --revision v2 --cache-dir {hf_cache}" in message


def test_a_model_missing_from_the_cache_names_the_command_that_fetches_it(tmp_path: Path) -> None:
    with pytest.raises(ModelSourceError) as err:
        resolve_model_source("HuggingFaceTB/SmolLM2-135M-Instruct", str(tmp_path / "empty"))
    message = str(err.value)
    assert message.startswith("model.source 'HuggingFaceTB/SmolLM2-135M-Instruct': no local folder of that name")
    assert "(revision main)" in message and str(tmp_path / "empty") in message
    assert (
        f"hf download HuggingFaceTB/SmolLM2-135M-Instruct --revision main --cache-dir {tmp_path / 'empty'}" in message
    )


def test_a_pinned_commit_missing_from_the_cache_is_the_same_error(hf_cache: Path) -> None:
    with pytest.raises(ModelSourceError, match=f"hf download {REPO} --revision {'d' * 40}"):
        resolve_model_source(f"{REPO}@{'d' * 40}", str(hf_cache))


def test_a_half_downloaded_snapshot_does_not_count(tmp_path: Path, tiny_model_dir: Path) -> None:
    cache = tmp_path / "hf"
    snapshot = hf_cache_entry(cache, REPO, tiny_model_dir, commit=NEW)
    (snapshot / "model.safetensors").unlink()  # listed in trees/<commit>.json, but not there
    with pytest.raises(ModelSourceError, match="not in the Hugging Face cache"):
        resolve_model_source(f"{REPO}@{NEW}", str(cache))


def test_the_default_cache_is_huggingface_hubs(hf_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hf_cache))
    assert resolve_model_source(REPO) == hf_storage(hf_cache, REPO) / "snapshots" / NEW


def test_a_local_folder_wins_over_an_id_of_the_same_spelling(
    hf_cache: Path, tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    local = tmp_path / REPO
    local.mkdir(parents=True)
    (local / "config.json").write_text((tiny_model_dir / "config.json").read_text())
    assert resolve_model_source(REPO, str(hf_cache)) == local
    assert pin_model_source(ModelConfig(source=REPO, cache_dir=str(hf_cache))).source == REPO  # nothing to pin


def test_modelscope_ids_resolve_offline_from_its_cache(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "ms"
    snapshot = modelscope_cache_entry(cache, REPO, tiny_model_dir)
    pinned = pin_model_source(ModelConfig(source=f"modelscope:{REPO}", cache_dir=str(cache)))
    assert pinned.source == f"modelscope:{REPO}@master"  # ModelScope keys snapshots by revision name
    assert resolve_model(pinned) == snapshot
    monkeypatch.setenv("USE_MODELSCOPE_HUB", "1")  # LLaMA-Factory's switch: plain ids go to ModelScope
    assert pin_model_source(ModelConfig(source=REPO, cache_dir=str(cache))).source == f"modelscope:{REPO}@master"
    with pytest.raises(ModelSourceError) as err:
        resolve_model_source(f"{REPO}@v2", str(cache))
    assert f"modelscope download {REPO} --revision v2 --cache-dir {cache}" in str(err.value)
    assert "ModelScope cache" in str(err.value)


def test_modelscope_reads_its_default_cache(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODELSCOPE_CACHE", str(tmp_path / "ms"))
    snapshot = modelscope_cache_entry(tmp_path / "ms", REPO, tiny_model_dir, revision="v1")
    assert resolve_model_source(f"modelscope:{REPO}@v1") == snapshot


def test_workers_of_a_node_wait_for_the_one_that_fetches(tmp_path: Path, tiny_model_dir: Path) -> None:
    """While one process holds the repository's lock (as a downloading worker does), the others wait, then
    find the snapshot on their second look instead of fetching it again (offline, a fetch would fail)."""
    cache = tmp_path / "hf"
    lock_file = HUBS["huggingface"].lock_file(HubModel("huggingface", REPO, NEW), str(cache))
    lock_file.parent.mkdir(parents=True)
    results: list[Path | BaseException] = []

    def resolve() -> None:
        try:
            results.append(resolve_model_source(f"{REPO}@{NEW}", str(cache)))
        except BaseException as err:
            results.append(err)

    import fcntl

    with open(lock_file, "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        waiters = [threading.Thread(target=resolve) for _ in range(2)]
        for waiter in waiters:
            waiter.start()
        time.sleep(1.0)
        assert all(w.is_alive() for w in waiters) and not results  # blocked on the lock
        snapshot = hf_cache_entry(cache, REPO, tiny_model_dir, commit=NEW)
    for waiter in waiters:
        waiter.join(timeout=30)
    assert results == [snapshot, snapshot]


def test_trust_remote_code_warns_once_naming_the_repository(hf_cache: Path) -> None:
    cfg = ModelConfig(source=REPO, cache_dir=str(hf_cache), trust_remote_code=True)
    with pytest.warns(ConfigWarning, match=f"model.trust_remote_code is on: running code shipped with {REPO}$"):
        pin_model_source(cfg)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        pin_model_source(cfg)
        pin_model_source(ModelConfig(source=REPO, cache_dir=str(hf_cache)))
    assert not seen
