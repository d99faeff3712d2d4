"""Serve replicas and eval actors get the model as a pinned id, never a folder of the driver's Hub cache: each
resolves it on its own node. Two caches stand for two nodes: the driver's holds the pinned commit's config.json
only (enough to pin and plan; loading from it fails), the replica's node's holds the whole model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hub_cache import hf_cache_entry

from raytune_ft.config import load_config
from raytune_ft.evaluate import eval_target
from raytune_ft.models import load_row_tokenizer
from raytune_ft.serve import plan_serving

REPO = "tiny-org/tiny-llama"
COMMIT = "c" * 40
PINNED = f"{REPO}@{COMMIT}"


@pytest.fixture
def node_cache(tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The node's full cache; the process starts as the driver, whose own cache has config.json alone."""
    driver, node = tmp_path / "driver", tmp_path / "node"
    hf_cache_entry(driver, REPO, tiny_model_dir, commit=COMMIT, exclude=_all_but("config.json", tiny_model_dir))
    hf_cache_entry(node, REPO, tiny_model_dir, commit=COMMIT, refs=())
    monkeypatch.setenv("HF_HUB_CACHE", str(driver))
    return node


def _all_but(name: str, folder: Path) -> list[str]:
    return [path.name for path in folder.iterdir() if path.name != name]


def test_a_serve_plan_holds_the_pinned_model_and_each_replica_resolves_it(
    node_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from raytune_ft.serve.hf import HFServer

    plan = plan_serving(load_config(None, [f"model.source={REPO}", "serve.engine=hf"]))
    assert plan.model.source == PINNED and plan.tokenizer_dir is None
    monkeypatch.setenv("HF_HUB_CACHE", str(node_cache))  # now a replica, on its own node
    server = HFServer(plan)
    assert server.model.config.num_hidden_layers == 2 and server.tokenizer.chat_template

    pytest.importorskip("vllm")
    from raytune_ft.serve.openai import llm_config, on_node

    config = llm_config(plan)  # what the driver hands Ray Serve LLM: no folder of its cache
    assert config.model_loading_config.model_source == PINNED and "tokenizer" not in config.engine_kwargs
    config.get_engine_config()  # the driver computes (and caches) it while building the deployment
    folder = node_cache / f"models--{REPO.replace('/', '--')}" / "snapshots" / COMMIT
    local = on_node(config, folder, folder)  # what the replica starts its engine with
    assert local.get_engine_config().hf_model_id == str(folder) and local.engine_kwargs["tokenizer"] == str(folder)
    assert local.model_id == config.model_id and local.runtime_env == config.runtime_env


def test_eval_pins_the_model_once_and_each_actor_resolves_it(
    node_cache: Path, tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, adapter_checkpoint: Any
) -> None:
    plain = eval_target(None, REPO)
    assert plain.model.model == plain.tokenizer.source == PINNED
    checkpoint = adapter_checkpoint(tiny_model_dir, tmp_path / "run", 1, seed=1, source=str(tiny_model_dir))
    adapted = eval_target(str(tmp_path / "run"), REPO)  # --checkpoint on --model org/name
    assert adapted.model.model == adapted.tokenizer.source == PINNED, "every actor must load the same commit"
    assert adapted.adapter == str(checkpoint)

    monkeypatch.setenv("HF_HUB_CACHE", str(node_cache))  # now a tokenizing or scoring actor, on its own node
    assert load_row_tokenizer(plain.tokenizer, plain.adapter)("hi")["input_ids"]
    model, _ = plain.model.load()
    assert model.config.num_hidden_layers == 2
    model, _ = adapted.model.load()
    assert type(model).__name__ == "PeftModel"  # the checkpoint's adapter on the base from this node's cache
