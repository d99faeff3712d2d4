"""Hub ids resolve offline through caches laid out as huggingface_hub and modelscope lay them out: the
driver pins a branch to its commit, a commit stays, a local folder wins over an id of the same spelling,
and a model missing from the cache is one error that says how to fetch it."""

from __future__ import annotations

import json
import shutil
import threading
import time
import warnings
from pathlib import Path

import pytest
from hub_cache import hf_cache_entry, hf_storage, modelscope_cache_entry

from raytune_ft.config import ConfigWarning, ModelConfig
from raytune_ft.models import ModelSourceError, hub_model, pin_model_source, resolve_model, resolve_model_source
from raytune_ft.models.hub import COMPLETE, HUBS, HubModel

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


def test_the_default_cache_is_the_one_the_environment_names_now(
    hf_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """huggingface_hub reads HF_HUB_CACHE and HF_HOME once, at import; a worker's environment may name another."""
    monkeypatch.setenv("HF_HUB_CACHE", str(hf_cache))
    assert resolve_model_source(REPO) == hf_storage(hf_cache, REPO) / "snapshots" / NEW
    monkeypatch.delenv("HF_HUB_CACHE")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    shutil.copytree(hf_cache, tmp_path / "home" / "hub", symlinks=True)
    assert resolve_model_source(REPO) == tmp_path / "home" / "hub" / hf_storage(Path(), REPO) / "snapshots" / NEW


def test_a_local_folder_wins_over_an_id_of_the_same_spelling(
    hf_cache: Path, tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    local = tmp_path / REPO
    local.mkdir(parents=True)
    (local / "config.json").write_text((tiny_model_dir / "config.json").read_text())
    assert resolve_model_source(REPO, str(hf_cache)) == local
    # Pinned as an absolute folder: a worker runs elsewhere, where REPO would name the Hub model.
    pinned = pin_model_source(ModelConfig(source=REPO, cache_dir=str(hf_cache)))
    assert pinned.source == str(local.resolve())
    monkeypatch.chdir(tmp_path.parent)
    assert resolve_model(pinned) == local.resolve()
    assert (
        pin_model_source(ModelConfig(source="builtin:smollm2-135m-instruct")).source == "builtin:smollm2-135m-instruct"
    )


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


def test_workers_of_a_node_wait_for_the_one_that_fetches(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While one process holds the repository's lock (as a downloading worker does), the others wait, then
    find the snapshot on their second look instead of fetching it again (a fetch would fail: no network)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # offline, nothing waits: a missing model is an error at once
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


def test_offline_a_missing_model_is_the_clear_error_before_anything_is_written(tmp_path: Path) -> None:
    """A shared cache is often read-only: offline, nothing (not even a lock file) is written into it."""
    for hub, source in [("hf", f"{REPO}@{NEW}"), ("ms", f"modelscope:{REPO}")]:
        cache = tmp_path / hub
        cache.mkdir()
        with pytest.raises(ModelSourceError, match="HF_HUB_OFFLINE=1 keeps raytune_ft from downloading it"):
            resolve_model_source(source, str(cache))
        assert not any(cache.rglob("*")), f"{source}: wrote {sorted(cache.rglob('*'))}"


@pytest.fixture
def modelscope_downloads(tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, threading.Event]:
    """ModelScope online, its network download replaced by one that writes the model into the snapshot folder as
    modelscope does (``config.json`` first, the rest once ``finish`` is set); lookups are modelscope's own."""
    from raytune_ft.models import hub

    real = hub._modelscope_download()
    events = {"started": threading.Event(), "finish": threading.Event()}

    def snapshot_download(repo: str, revision: str, cache_dir: str, local_files_only: bool = False) -> str:
        if local_files_only:
            return str(real(repo, revision=revision, cache_dir=cache_dir, local_files_only=True))
        folder = Path(cache_dir) / "models" / repo.replace("/", "--") / "snapshots" / revision
        folder.mkdir(parents=True)
        shutil.copy(tiny_model_dir / "config.json", folder)
        events["started"].set()
        assert events["finish"].wait(30)
        shutil.copytree(tiny_model_dir, folder, dirs_exist_ok=True)
        return str(folder)

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(hub, "_modelscope_download", lambda: snapshot_download)
    return events


def test_a_modelscope_download_under_way_is_waited_for_not_loaded(
    tmp_path: Path, tiny_model_dir: Path, modelscope_downloads: dict[str, threading.Event]
) -> None:
    """modelscope's offline lookup returns a snapshot folder as soon as it holds one file, and downloads write into
    that folder: a second worker of the node waits for the first one's download instead of loading half a model."""
    cache, source = tmp_path / "ms", f"modelscope:{REPO}"
    results: dict[str, Path] = {}

    def resolve(name: str) -> None:
        results[name] = resolve_model_source(source, str(cache))

    first = threading.Thread(target=resolve, args=("first",))
    first.start()
    assert modelscope_downloads["started"].wait(30)
    second = threading.Thread(target=resolve, args=("second",))
    second.start()
    second.join(timeout=1.5)
    assert second.is_alive() and not results, "the second worker returned the folder while it was being written"
    modelscope_downloads["finish"].set()
    first.join(timeout=30)
    second.join(timeout=30)
    snapshot = cache / "models" / REPO.replace("/", "--") / "snapshots" / "master"
    assert results == {"first": snapshot, "second": snapshot}
    assert (snapshot / "model.safetensors").is_file() and (snapshot / COMPLETE).is_file()


def test_an_unmarked_modelscope_folder_counts_only_where_nothing_can_be_writing_it(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A folder without our completion mark (``modelscope download`` made it, or a download stopped): online it is
    fetched again (modelscope checks each file); offline it is used unless modelscope's partial files are in it."""
    hub, model = HUBS["modelscope"], HubModel("modelscope", REPO, "master")
    snapshot = modelscope_cache_entry(tmp_path / "ms", REPO, tiny_model_dir)
    assert hub.cached(model, str(tmp_path / "ms")) == snapshot  # offline (tests set HF_HUB_OFFLINE=1)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert hub.cached(model, str(tmp_path / "ms")) is None
    (snapshot / COMPLETE).touch()
    assert hub.cached(model, str(tmp_path / "ms")) == snapshot
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (snapshot / COMPLETE).unlink()
    (snapshot / "model.safetensors").rename(snapshot / "model.safetensors.incomplete")  # a download that stopped
    assert hub.cached(model, str(tmp_path / "ms")) is None
    with pytest.raises(ModelSourceError, match="not in the ModelScope cache"):
        resolve_model_source(f"modelscope:{REPO}", str(tmp_path / "ms"))
