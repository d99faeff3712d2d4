"""Shared fixtures: the builtin model (converted once per machine) and tiny random models built
from configs, so unit tests exercise real tokenizers and real transformer code in seconds."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.tiny_models import save_tiny_llama

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

BUILTIN = "builtin:smollm2-135m-instruct"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def builtin_dir() -> Path:
    from raytune_ft.models import resolve_model_source

    return resolve_model_source(BUILTIN)


@pytest.fixture(scope="session")
def tokenizer(builtin_dir: Path) -> Any:
    from raytune_ft.models import load_tokenizer

    return load_tokenizer(builtin_dir)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, tokenizer: Any) -> Path:
    """A 2-layer llama with random weights and the builtin tokenizer (about 3M parameters)."""
    return save_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), tokenizer)


def _start_local_ray(tmp_path_factory: pytest.TempPathFactory, dashboard: bool, ingress: str) -> str | None:
    """Start the module's local Ray; returns HAProxy's state folder, if ``ingress`` made one."""
    import ray

    from raytune_ft.serve.app import serve_env
    from raytune_ft.train.launch import WORKER_ENV

    env = {**WORKER_ENV, **serve_env(ingress)}
    if os.environ.get("RAYTUNE_FT_CACHE"):
        env["RAYTUNE_FT_CACHE"] = os.environ["RAYTUNE_FT_CACHE"]
    env["PYTHONPATH"] = str(Path(__file__).parents[1])
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=dashboard,
        dashboard_host="127.0.0.1",
        runtime_env={"env_vars": env},
        _temp_dir=str(tmp_path_factory.mktemp("ray")),
    )
    return env.get("RAY_SERVE_HAPROXY_SERVER_STATE_BASE")


def _stop_local_ray(haproxy_state: str | None) -> None:
    import ray

    ray.shutdown()
    if haproxy_state:
        shutil.rmtree(haproxy_state, ignore_errors=True)


@pytest.fixture(scope="module")
def serve_ingress() -> str:
    """``serve.ingress`` of the module's local Ray: the endpoint tests run Serve as ``raytune-ft serve``
    starts it (``auto``, HAProxy here); ``RAYTUNE_FT_TEST_INGRESS`` or a module's own fixture picks another."""
    return os.environ.get("RAYTUNE_FT_TEST_INGRESS", "auto")


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory: pytest.TempPathFactory, serve_ingress: str) -> Iterator[None]:
    """A private local Ray per test module (never joins another cluster on the machine)."""
    haproxy_state = _start_local_ray(tmp_path_factory, dashboard=False, ingress=serve_ingress)
    yield
    _stop_local_ray(haproxy_state)


@pytest.fixture(scope="module")
def local_ray_with_dashboard(tmp_path_factory: pytest.TempPathFactory, serve_ingress: str) -> Iterator[None]:
    """``local_ray`` with its dashboard (on 127.0.0.1), as ``raytune-ft`` starts it: Ray Train's
    placement-group cleaner needs its State API to free the resources of a run whose trial was
    stopped (a sweep's early-stopped or interrupted trials)."""
    haproxy_state = _start_local_ray(tmp_path_factory, dashboard=True, ingress=serve_ingress)
    yield
    _stop_local_ray(haproxy_state)


@pytest.fixture(scope="session")
def identity_batch(tokenizer: Any) -> Any:
    """``identity_batch(n, offset=0)``: n rows of the bundled identity set as a padded training batch."""
    import json

    from raytune_ft.data import BUILTIN_DATASETS, encode_batch, normalize_row, pad_batch, render_segments

    rows = [json.loads(line) for line in BUILTIN_DATASETS["identity"].read_text().splitlines()]
    names = {"name": "Raytune", "author": "the raytune_ft team"}

    def make(n: int = 4, offset: int = 0) -> dict[str, torch.Tensor]:
        convs = [
            render_segments(tokenizer, normalize_row(r, names, "identity"), False) for r in rows[offset : offset + n]
        ]
        encoded = [e for e in encode_batch(tokenizer, convs, 256) if e is not None]
        return pad_batch([ids for ids, _ in encoded], [labels for _, labels in encoded], tokenizer.pad_token_id)

    return make


def make_adapter_checkpoint(
    base: Path,
    run: Path,
    step: int,
    seed: int,
    template: str | None = None,
    source: str = BUILTIN,
    dora: bool = False,
    targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj"),
) -> Path:
    """A LoRA checkpoint of ``base`` in raytune_ft's layout whose random, non-zero adapter (on ``targets``)
    visibly changes the output; ``template`` replaces the chat template saved with it, ``source`` is its
    model.source."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from raytune_ft.config import dump_config, load_config

    folder = run / f"checkpoint-{step:06d}"
    torch.manual_seed(seed)  # lora_A's initialisation: the same adapter on every run
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32),
        LoraConfig(r=8, lora_alpha=16, target_modules=list(targets), use_dora=dora),
    )
    generator = torch.Generator().manual_seed(seed)
    for name, weight in model.named_parameters():
        if "lora_B" in name:
            weight.data.normal_(0, 0.1, generator=generator)
    model.save_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(base)
    if template is not None:
        tokenizer.chat_template = template
    tokenizer.save_pretrained(folder)
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    cfg = load_config(None, [f"model.source={source}", f"train.run_name={run.name}"])
    (folder / "raytune_ft.yaml").write_text(dump_config(cfg))
    return folder


@pytest.fixture(scope="session")
def adapter_checkpoint() -> Any:
    """``adapter_checkpoint(base, run_dir, step, seed, template=None, source=BUILTIN, dora=False, targets=...)``:
    see make_adapter_checkpoint."""
    return make_adapter_checkpoint


@pytest.fixture(scope="session")
def free_port() -> Any:
    """``free_port()``: a TCP port on 127.0.0.1 that nothing listens on now."""
    import socket

    def pick() -> int:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return int(sock.getsockname()[1])

    return pick
