"""LLaMA-Factory's whole ``dataset_info.json`` schema: every entry key, hub datasets read offline from
caches laid out as huggingface_hub and modelscope lay them out, subsets and splits chosen by the Hub's
rules, ``num_samples`` draws, .txt/.arrow files, and empty data refused before anything runs."""

from __future__ import annotations

import itertools
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raytune_ft.config import DataConfig
from raytune_ft.data import DataError, build_datasets, resolve_datasets
from raytune_ft.data.hub import is_offline
from raytune_ft.data.layout import split_patterns
from raytune_ft.data.records import (
    RecordSelection,
    first_records,
    has_rows,
    plan_sampling,
    require_rows,
    select_rows,
)
from raytune_ft.data.sources import check_row_format, dataset_names, load_from
from tests.hub_cache import dataset_cache, modelscope_cache_entry

CARD = """---
license: mit
configs:
- config_name: en
  default: true
  data_files:
  - split: train
    path: en/train-*.jsonl
  - split: validation
    path: en/dev.jsonl
- config_name: zh
  data_files: zh/*.parquet
---
# A demo dataset card
"""


def rows(tag: str, n: int) -> str:
    return "".join(json.dumps({"instruction": f"{tag} q{i}", "output": f"{tag} a{i}"}) + "\n" for i in range(n))


def write(root: Path, files: dict[str, str | bytes]) -> Path:
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return root


def parquet_bytes(tmp_path: Path, **columns: list[Any]) -> bytes:
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table(columns), path)
    return path.read_bytes()


def registry(folder: Path, entries: dict[str, dict[str, Any]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "dataset_info.json").write_text(json.dumps(entries))
    return folder


@pytest.fixture
def hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Hugging Face cache that this test's hub look-ups use (offline, as conftest sets); set in
    the environment only, as a user would, after huggingface_hub was imported."""
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    return cache


@pytest.fixture
def demo_repo(tmp_path: Path) -> Path:
    """A dataset repository with two subsets in its card, and a folder the card does not name."""
    return write(
        tmp_path / "repo",
        {
            "README.md": CARD,
            "en/train-00000.jsonl": rows("en", 3),
            "en/train-00001.jsonl": rows("en1", 2),
            "en/dev.jsonl": rows("dev", 1),
            "zh/part-0.parquet": parquet_bytes(tmp_path, instruction=["zh q"], output=["zh a"]),
            "extra/data/train.jsonl": rows("extra", 1),
            "extra/data/test.jsonl": rows("extra-test", 1),
        },
    )


def relative(files: tuple[str, ...], root: Path) -> list[str]:
    return sorted(Path(f).relative_to(root).as_posix() for f in files)


# --- hub datasets, offline ----------------------------------------------------------------------------


def test_hub_subsets_and_splits_follow_the_dataset_card(hf_cache: Path, demo_repo: Path, tmp_path: Path) -> None:
    snapshot = dataset_cache(hf_cache, "org/demo", demo_repo)
    folder = registry(tmp_path / "data", {
        "default": {"hf_hub_url": "org/demo"},
        "dev": {"hf_hub_url": "org/demo", "split": "validation"},
        "zh": {"hf_hub_url": "org/demo", "subset": "zh"},
        "folder": {"hf_hub_url": "org/demo", "folder": "extra", "split": "test"},
    })  # fmt: skip
    default, dev, zh, folder_split = resolve_datasets(["default", "dev", "zh", "folder"], folder)
    # Cache paths are the snapshot's own: the commit the refs/main of the cache points to.
    assert snapshot.parent.parent.name == "datasets--org--demo" and (snapshot.parent.parent / "refs" / "main").is_file()
    assert relative(default.files, snapshot) == ["en/train-00000.jsonl", "en/train-00001.jsonl"]
    assert default.reader == "json" and default.owns(default.files[0]) and not zh.owns(default.files[0])
    assert relative(dev.files, snapshot) == ["en/dev.jsonl"]
    assert relative(zh.files, snapshot) == ["zh/part-0.parquet"] and zh.reader == "parquet"
    # A folder is read by the conventional layout inside it, as the Hub loader does with data_dir.
    assert relative(folder_split.files, snapshot) == ["extra/data/test.jsonl"]
    assert [r for _, r in first_records(default.files[0], "json", 1)] == [rows("en", 1).strip()]


@pytest.mark.parametrize(
    "entry, problem",
    [
        ({"subset": "fr"}, "subset 'fr' is not among the repository's subsets (en, zh)"),
        ({"subset": "zhh"}, "Did you mean 'zh'?"),
        ({"split": "test"}, "subset 'en' has no split 'test'; its splits: train, validation"),
        ({"folder": "nowhere"}, "folder 'nowhere' holds no data file"),
    ],
)
def test_unknown_subsets_splits_and_folders_name_what_exists(
    hf_cache: Path, demo_repo: Path, tmp_path: Path, entry: dict[str, str], problem: str
) -> None:
    dataset_cache(hf_cache, "org/demo", demo_repo)
    folder = registry(tmp_path / "data", {"d": {"hf_hub_url": "org/demo", **entry}})
    with pytest.raises(DataError, match="entry 'd': .*" + _re(problem)):
        resolve_datasets(["d"], folder)


def _re(text: str) -> str:
    import re

    return re.escape(text)


def test_repositories_without_configs_use_the_conventional_layouts(hf_cache: Path, tmp_path: Path) -> None:
    sharded = write(tmp_path / "sharded", {
        "data/train-00000-of-00002.parquet": parquet_bytes(tmp_path, text=["a"]),
        "data/train-00001-of-00002.parquet": parquet_bytes(tmp_path, text=["b"]),
        "data/test-00000-of-00001.parquet": parquet_bytes(tmp_path, text=["c"]),
        "README.md": "# no header\n",
    })  # fmt: skip
    by_subset = write(tmp_path / "by-subset", {"math/train.jsonl": rows("m", 1), "math/dev.jsonl": rows("d", 1),
                                               "code/train.jsonl": rows("c", 1)})  # fmt: skip
    dataset_cache(hf_cache, "org/sharded", sharded)
    snapshot = dataset_cache(hf_cache, "org/by-subset", by_subset)
    folder = registry(tmp_path / "data", {
        "sharded": {"hf_hub_url": "org/sharded"},
        "sharded_test": {"hf_hub_url": "org/sharded", "split": "test"},
        "math_dev": {"hf_hub_url": "org/by-subset", "subset": "math", "split": "validation"},
    })  # fmt: skip
    train, test, math_dev = resolve_datasets(["sharded", "sharded_test", "math_dev"], folder)
    assert [Path(f).name for f in train.files] == ["train-00000-of-00002.parquet", "train-00001-of-00002.parquet"]
    assert [Path(f).name for f in test.files] == ["test-00000-of-00001.parquet"]
    assert relative(math_dev.files, snapshot) == ["math/dev.jsonl"]
    # The Hub's keyword rules, file names and folders: the split name as a whole word.
    assert split_patterns(["train/a.json", "valid/b.json"]) == {
        "train": ["train/a.json"],
        "validation": ["valid/b.json"],
    }
    assert split_patterns(["my_train.jsonl", "eval.jsonl", "trainer.jsonl"]) == {
        "train": ["my_train.jsonl"], "test": ["eval.jsonl"],
    }  # fmt: skip
    assert split_patterns(["a.jsonl", "b.jsonl"]) == {"train": ["a.jsonl", "b.jsonl"]}


def test_download_patterns_fetch_only_the_chosen_files_and_globs_keep_to_one_folder(tmp_path: Path) -> None:
    from raytune_ft.data.layout import download_patterns, select_files

    readme = write(tmp_path / "card", {"README.md": CARD}) / "README.md"
    assert download_patterns(readme, "e", split="validation") == ["en/dev.jsonl", "en/dev.jsonl/*"]
    assert download_patterns(readme, "e", subset="zh") == ["zh/*.parquet", "zh/*.parquet/*"]
    assert download_patterns(tmp_path / "none.md", "e", subset="math")[0] == "math/*.json"
    repo = write(tmp_path / "repo", {"README.md": CARD, "en/train-1.jsonl": rows("a", 1),
                                     "en/deeper/train-2.jsonl": rows("b", 1)})  # fmt: skip
    assert [p.name for p in select_files(repo, "e")] == ["train-1.jsonl"]  # "*" stays in en/


def test_a_dataset_missing_from_the_cache_names_repo_revision_and_the_command(hf_cache: Path, tmp_path: Path) -> None:
    folder = registry(tmp_path / "data", {"gone": {"hf_hub_url": "org/absent@v1.0"}})
    with pytest.raises(DataError) as err:
        resolve_datasets(["gone"], folder)
    message = str(err.value)
    assert "entry 'gone'" in message and "'org/absent' (revision v1.0)" in message and str(hf_cache) in message
    assert "HF_HUB_OFFLINE=1" in message and "hf download org/absent --repo-type dataset --revision v1.0" in message


def test_environment_switches_read_as_model_sources_read_them(
    hf_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from raytune_ft.models import hub as model_hub

    values = (None, "", "1", "0", "true", "YES", "On", "y", "off")
    for hf_offline, transformers_offline in itertools.product(values, values):
        for name, value in (("HF_HUB_OFFLINE", hf_offline), ("TRANSFORMERS_OFFLINE", transformers_offline)):
            if value is None:
                monkeypatch.delenv(name, raising=False)
            else:
                monkeypatch.setenv(name, value)
        assert is_offline() == model_hub.is_offline(), (hf_offline, transformers_offline)
    for value in values:
        monkeypatch.setenv("USE_MODELSCOPE_HUB", value or "")
        on_modelscope = model_hub.hub_model("org/model").hub == "modelscope"  # type: ignore[union-attr]
        assert (load_from({"hf_hub_url": "o/h", "ms_hub_url": "o/m"}, "e") == "ms_hub") == on_modelscope, value
    # TRANSFORMERS_OFFLINE alone keeps hub datasets offline too: a missing one is not fetched.
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    folder = registry(tmp_path / "data", {"gone": {"hf_hub_url": "org/absent"}})
    with pytest.raises(DataError, match=_re("offline mode (HF_HUB_OFFLINE=1 or TRANSFORMERS_OFFLINE=1) forbids")):
        resolve_datasets(["gone"], folder)


def test_a_missing_modelscope_client_names_the_package_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "modelscope_hub", None)  # as if not installed: importing it fails
    monkeypatch.setitem(sys.modules, "modelscope_hub.compat", None)
    folder = registry(tmp_path / "data", {"ms": {"ms_hub_url": "org/ms-demo"}})
    with pytest.raises(
        DataError, match=_re("entry 'ms'") + ".*" + _re("reading ModelScope datasets needs `pip install modelscope`")
    ):
        resolve_datasets(["ms"], folder)


def test_a_revision_reads_that_commit_of_the_cache(hf_cache: Path, tmp_path: Path) -> None:
    old = dataset_cache(hf_cache, "org/moving", write(tmp_path / "v1", {"train.jsonl": rows("old", 1)}),
                        commit="a" * 40, refs=())  # fmt: skip
    dataset_cache(hf_cache, "org/moving", write(tmp_path / "v2", {"train.jsonl": rows("new", 1)}), commit="b" * 40)
    folder = registry(tmp_path / "data", {"old": {"hf_hub_url": f"org/moving@{'a' * 40}"},
                                          "new": {"hf_hub_url": "org/moving"}})  # fmt: skip
    pinned, latest = resolve_datasets(["old", "new"], folder)
    assert pinned.files == (str(old / "train.jsonl"),) and "b" * 40 in latest.files[0]


def test_modelscope_datasets_come_from_its_cache_and_use_modelscope_hub_prefers_them(
    hf_cache: Path, demo_repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ms_cache = tmp_path / "ms-cache"
    monkeypatch.setenv("MODELSCOPE_CACHE", str(ms_cache))
    snapshot = modelscope_cache_entry(ms_cache, "org/ms-demo", demo_repo, repo_type="dataset")
    assert snapshot == ms_cache / "datasets" / "org--ms-demo" / "snapshots" / "master"
    folder = registry(tmp_path / "data", {
        "ms": {"ms_hub_url": "org/ms-demo", "subset": "zh"},
        "both": {"hf_hub_url": "org/not-cached", "ms_hub_url": "org/ms-demo"},
        "ms_missing": {"ms_hub_url": "org/not-cached"},
    })  # fmt: skip
    (ms,) = resolve_datasets(["ms"], folder)
    assert relative(ms.files, snapshot) == ["zh/part-0.parquet"]
    with pytest.raises(DataError, match=_re("'org/not-cached' (revision main) from the Hugging Face Hub")):
        resolve_datasets(["both"], folder)  # hf_hub_url wins by default, as in LLaMA-Factory
    monkeypatch.setenv("USE_MODELSCOPE_HUB", "1")
    (both,) = resolve_datasets(["both"], folder)
    assert relative(both.files, snapshot) == ["en/train-00000.jsonl", "en/train-00001.jsonl"]
    with pytest.raises(DataError, match=_re("modelscope download --repo-type dataset org/not-cached")):
        resolve_datasets(["ms_missing"], folder)


def test_remote_dataset_dir_reads_registry_and_files_from_a_hub_repository(hf_cache: Path, tmp_path: Path) -> None:
    repo = write(tmp_path / "remote", {
        "dataset_info.json": json.dumps({"demo": {"file_name": "demo.jsonl"}, "hub": {"hf_hub_url": "org/demo"}}),
        "demo.jsonl": rows("remote", 2),
    })  # fmt: skip
    snapshot = dataset_cache(hf_cache, "org/registry", repo)
    (demo,) = resolve_datasets(["demo"], "REMOTE:org/registry")
    assert demo.path == snapshot / "demo.jsonl"  # the snapshot path (a symlink to its blob), not the blob
    assert dataset_names("REMOTE:org/registry")[-2:] == ["demo", "hub"]
    with pytest.raises(DataError, match=_re("data.dataset_dir 'REMOTE:org/elsewhere': dataset 'org/elsewhere'")):
        resolve_datasets(["demo"], "REMOTE:org/elsewhere")


def test_online_dataset_dir_takes_names_as_hub_repositories(hf_cache: Path, demo_repo: Path) -> None:
    dataset_cache(hf_cache, "org/demo", demo_repo)
    (source,) = resolve_datasets(["org/demo"], "ONLINE")
    assert [Path(f).name for f in source.files] == ["train-00000.jsonl", "train-00001.jsonl"]
    (bundled,) = resolve_datasets(["identity"], "ONLINE")
    assert bundled.name == "identity" and not bundled.files


# --- the other entry keys ------------------------------------------------------------------------------


def test_load_from_follows_llamafactory_and_an_explicit_choice_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    entry = {"hf_hub_url": "o/h", "ms_hub_url": "o/m", "script_url": "s", "file_name": "f.json"}
    assert load_from(entry, "e") == "hf_hub"
    assert load_from({"ms_hub_url": "o/m", "file_name": "f.json"}, "e") == "ms_hub"
    assert load_from({"script_url": "s", "cloud_file_name": "s3://b/f.json", "file_name": "f"}, "e") == "script"
    assert load_from({**entry, "load_from": "file"}, "e") == "file"
    monkeypatch.setenv("USE_MODELSCOPE_HUB", "1")
    assert load_from(entry, "e") == "ms_hub"
    monkeypatch.setenv("USE_OPENMIND_HUB", "1")
    assert load_from({"hf_hub_url": "o/h", "om_hub_url": "o/o"}, "e") == "om_hub"


@pytest.mark.parametrize(
    "entry, problem",
    [
        ({"file_name": "d.jsonl", "revision": "x"}, "keys ['revision'] are not supported"),
        ({"file_name": "d.jsonl", "load_from": "s3"}, "load_from 's3' is unknown; use one of hf_hub, ms_hub"),
        ({"file_name": "d.jsonl", "load_from": "hf_hub"}, "load_from 'hf_hub' reads 'hf_hub_url', which the entry"),
        ({"file_name": "d.jsonl", "num_samples": 0}, "num_samples must be a whole number of rows >= 1, got 0"),
        ({"file_name": "d.jsonl", "num_samples": "10"}, "num_samples must be a whole number of rows >= 1, got '10'"),
        ({"file_name": "d.jsonl", "num_samples": True}, "num_samples must be a whole number"),
        ({"file_name": "d.jsonl", "split": ""}, "split must be a non-empty string, got ''"),
        ({"file_name": "d.jsonl", "subset": 3}, "subset must be a non-empty string, got 3"),
        ({"file_name": "d.jsonl", "split": "test"}, "file_name 'd.jsonl' is one file (all of it is split 'train')"),
        ({"om_hub_url": "o/n"}, "om_hub_url (the OpenMind hub) is not supported"),
        ({"cloud_file_name": "bucket/d.json"}, "cloud_file_name 'bucket/d.json' must be a URI"),
        ({"script_url": "scripted"}, "holds no data file, only a loading script; dataset scripts are not run"),
        ({"formatting": "alpaca"}, "name the data with file_name"),
    ],
)
def test_bad_entries_name_the_entry_key_and_fix(tmp_path: Path, entry: dict[str, Any], problem: str) -> None:
    write(tmp_path, {"d.jsonl": rows("a", 1), "scripted/scripted.py": "import datasets\n"})
    folder = registry(tmp_path, {"d": entry})
    with pytest.raises(DataError, match="dataset_info.json entry 'd': .*" + _re(problem)):
        resolve_datasets(["d"], folder)


def test_script_and_cloud_entries_map_to_files_we_read(tmp_path: Path) -> None:
    write(tmp_path, {"belle/train.jsonl": rows("b", 1), "belle/dev.jsonl": rows("d", 1), "belle/belle.py": "x = 1\n"})
    folder = registry(tmp_path, {
        "script": {"script_url": "belle", "split": "validation"},
        "cloud": {"cloud_file_name": "s3://bucket/data/train.jsonl"},
        "cloud_dir": {"cloud_file_name": "gs://bucket/data/"},
    })  # fmt: skip
    script, cloud, cloud_dir = resolve_datasets(["script", "cloud", "cloud_dir"], folder)
    assert script.files == (str(tmp_path / "belle" / "dev.jsonl"),)
    assert cloud.read_paths() == ["s3://bucket/data/train.jsonl"] and cloud.extensions is None
    assert cloud_dir.read_paths() == ["gs://bucket/data"] and cloud_dir.extensions == ("json", "jsonl")


def test_a_local_folder_entry_with_a_split_picks_files_as_the_hub_does(tmp_path: Path) -> None:
    write(tmp_path, {"set/train.jsonl": rows("t", 2), "set/test.jsonl": rows("x", 1)})
    folder = registry(tmp_path, {"all": {"file_name": "set"}, "test": {"file_name": "set", "split": "test"}})
    everything, test = resolve_datasets(["all", "test"], folder)
    assert everything.path == tmp_path / "set" and not everything.files  # LLaMA-Factory reads every file
    assert test.files == (str(tmp_path / "set" / "test.jsonl"),)


# --- num_samples ---------------------------------------------------------------------------------------


def drawn(counts: dict[str, int], target: int, seed: int, max_rows: int | None = None) -> Counter[tuple[str, int]]:
    sampling = plan_sampling(counts, target, seed)
    assert sampling.total == target
    picked: Counter[tuple[str, int]] = Counter()
    for path, n in counts.items():
        records = iter((row, f"r{row}") for row in range(1, n + 1))
        picked.update(
            (path, row) for row, _ in select_rows(records, path, RecordSelection(seed=seed, sampling=sampling))
        )
    return picked


def test_num_samples_draws_exactly_that_many_rows_the_same_way_for_a_seed() -> None:
    counts = {"a.jsonl": 30, "b.jsonl": 70}
    fewer = drawn(counts, 40, seed=1)
    assert sum(fewer.values()) == 40 and max(fewer.values()) == 1  # distinct rows when fewer than the data
    assert drawn(counts, 40, seed=1) == fewer and drawn(counts, 40, seed=2) != fewer
    assert 4 <= sum(n for (path, _), n in fewer.items() if path == "a.jsonl") <= 20  # both files share the draw


def test_num_samples_beyond_the_rows_repeats_every_row_then_draws_the_rest() -> None:
    more = drawn({"a.jsonl": 10}, 25, seed=0)
    assert sum(more.values()) == 25 and len(more) == 10
    assert Counter(more.values()) == {2: 5, 3: 5}  # every row twice, 5 distinct rows a third time


# --- .txt and .arrow files -----------------------------------------------------------------------------


def test_txt_files_are_pt_rows_one_per_line(tmp_path: Path, tokenizer: Any) -> None:
    from raytune_ft.data import EncodeOptions, encode_rows

    text = tmp_path / "corpus.txt"
    text.write_text("First line of text.\n\n   \nSecond line, with {{braces}}.\n", encoding="utf-8")
    assert first_records(str(text), "text", 5) == [
        (1, json.dumps({"text": "First line of text."})), (4, json.dumps({"text": "Second line, with {{braces}}."})),
    ]  # fmt: skip
    (source,) = resolve_datasets([str(text)])
    assert source.reader == "text"
    folder = registry(tmp_path, {"c4_txt": {"file_name": "corpus.txt", "columns": {"prompt": "text"}}})
    (entry,) = resolve_datasets(["c4_txt"], folder)
    check_row_format([entry], "pt")
    with pytest.raises(DataError, match=r"plain text .* train it with method.stage pt"):
        check_row_format([entry], "sft")
    records = [(str(text), row, record) for row, record in first_records(str(text), "text", 5)]
    encoded = encode_rows(tokenizer, EncodeOptions(cutoff_len=64, stage="pt"), [entry], records)
    assert [tokenizer.decode(r.input_ids) for r in encoded] == [
        "First line of text." + tokenizer.eos_token, "Second line, with {{braces}}." + tokenizer.eos_token,
    ]  # fmt: skip


def test_arrow_files_in_stream_and_file_format(tmp_path: Path) -> None:
    table = pa.table({"instruction": ["q1", "q2"], "output": ["a1", "a2"]})
    for name, writer in (("stream.arrow", pa.ipc.new_stream), ("file.arrow", pa.ipc.new_file)):
        with pa.OSFile(str(tmp_path / name), "wb") as sink, writer(sink, table.schema) as out:
            out.write_table(table)
        assert [json.loads(r)["output"] for _, r in first_records(str(tmp_path / name), "arrow", 5)] == ["a1", "a2"]
    assert resolve_datasets([str(tmp_path / "stream.arrow")])[0].reader == "arrow"


# --- empty data ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, content, reader",
    [("e.jsonl", "", "json"), ("e.jsonl", "\n\n  \n", "json"), ("e.json", " [ \n ] ", "json"),
     ("e.csv", "instruction,output\n", "csv"), ("e.txt", "\n \n", "text")],
)  # fmt: skip
def test_empty_files_are_refused_naming_the_file(tmp_path: Path, name: str, content: str, reader: str) -> None:
    path = write(tmp_path, {name: content}) / name
    assert not has_rows(str(path), reader)
    (source,) = resolve_datasets([str(path)])
    with pytest.raises(DataError, match=f"dataset '{_re(str(path))}' is empty: {_re(str(path))} hold.s. no row"):
        require_rows(source)


def test_a_folder_of_empty_files_is_empty_and_one_row_is_enough(tmp_path: Path) -> None:
    write(tmp_path, {"set/a.jsonl": "", "set/b.jsonl": "\n"})
    (source,) = resolve_datasets([str(tmp_path / "set")])
    with pytest.raises(DataError, match="is empty: its 2 files"):
        require_rows(source)
    write(tmp_path, {"set/b.jsonl": rows("x", 1)})
    require_rows(source)
    assert has_rows(str(tmp_path / "set" / "b.jsonl"), "json")


def test_training_on_an_empty_file_fails_before_any_ray_task(tmp_path: Path) -> None:
    empty = write(tmp_path, {"empty.jsonl": ""}) / "empty.jsonl"
    cfg = DataConfig(dataset=[str(empty)])
    with pytest.raises(DataError, match="is empty"):
        build_datasets(cfg, lambda: None, seed=0, concurrency=1)  # raises on the driver: no Ray is running
