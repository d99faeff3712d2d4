"""The OpenAI-compatible endpoint for real: vLLM replicas of the builtin model on Ray Serve (local Ray),
called through the ``openai`` client. One app serves the whole module (an engine takes about a
minute to start here): the base model, a LoRA run with two checkpoints, a run with its own chat
template, and runs that appear under the adapter root while it is up.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
import psutil
import pytest

from raytune_ft.config import load_config

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

KEY = "test-key"
LIMIT = 64
PLAIN_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
QUESTION = [{"role": "user", "content": "Who are you?"}]


class App:
    def __init__(self, url: str, model: str, root: Path, runs: Path, base: Path, checkpoint: Any) -> None:
        self.url, self.model, self.root, self.runs, self.base = url, model, root, runs, base
        self.checkpoint = checkpoint

    def client(self, key: str = KEY, **kwargs: Any) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=key, **kwargs)


@pytest.fixture(scope="module")
def app(
    local_ray: None,
    builtin_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
    adapter_checkpoint: Any,
    free_port: Any,
) -> Iterator[App]:
    from ray import serve

    from raytune_ft.serve import plan_serving, start_server

    runs, root = tmp_path_factory.mktemp("runs"), tmp_path_factory.mktemp("saves")
    adapter_checkpoint(builtin_dir, runs / "demo", 1, seed=1)
    adapter_checkpoint(builtin_dir, runs / "demo", 2, seed=2)
    adapter_checkpoint(builtin_dir, runs / "styled", 1, seed=3, template=PLAIN_TEMPLATE)
    cfg = load_config(None, [
        f"serve.adapters={{demo: {runs / 'demo'}, styled: {runs / 'styled'}}}", f"serve.adapter_root={root}",
        f"serve.port={free_port()}", f"serve.api_key={KEY}", f"serve.max_tokens_limit={LIMIT}",
        "serve.max_model_len=512", "serve.dtype=float32", "serve.enforce_eager=true",
        "serve.engine=vllm", "serve.num_replicas=2", "serve.cpus_per_replica=0.5",
    ])  # fmt: skip
    plan = plan_serving(cfg)
    url = start_server(plan)
    yield App(url, plan.model_id, root, runs, builtin_dir, adapter_checkpoint)
    serve.shutdown()


def chat(client: openai.OpenAI, model: str, messages: list[dict[str, str]] = QUESTION, **kwargs: Any) -> Any:
    return client.chat.completions.create(
        model=model, messages=messages, **{"max_tokens": 16, "temperature": 0, **kwargs}
    )


def live(process: psutil.Process) -> bool:
    """Whether ``process`` still runs (not exited, not a zombie an earlier module's engine left unreaped)."""
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores to keep apart")
def test_the_endpoint_keeps_off_the_cores_the_engines_compute_on(app: App) -> None:
    """``serve.isolate_engine_cores`` (the default): vLLM binds its workers to all cores but one, and the
    replicas, their engine schedulers, Serve's controller and proxy and Ray's GCS run on the rest."""
    tree = [p for p in psutil.Process().children(recursive=True) if live(p)]  # this module's Ray and its children
    titles = {p.pid: (p.cmdline() or [p.name()])[0] for p in tree}
    workers = [p for p in tree if titles[p.pid].startswith("VLLM::Worker")]
    assert len(workers) == 2  # one engine per replica
    engine = set().union(*(p.cpu_affinity() for p in workers))
    assert engine < os.sched_getaffinity(0)
    kept_off = ("ray::ServeReplica", "VLLM::EngineCore", "ray::ServeController", "ray::ProxyActor", "gcs_server")
    others = [p for p in tree if titles[p.pid].split("/")[-1].startswith(kept_off)]
    names = [titles[p.pid] for p in others]
    assert sum(n.startswith("ray::ServeReplica") for n in names) == 2, names
    assert sum(n.startswith("VLLM::EngineCore") for n in names) == 2, names
    assert any(n.startswith("ray::ServeController") for n in names), names
    on_engine = {titles[p.pid]: t.id for p in others for t in p.threads() if os.sched_getaffinity(t.id) & engine}
    assert not on_engine, f"threads on the engine cores {sorted(engine)}: {on_engine}"


def test_health_is_open_and_every_other_route_needs_the_key(app: App) -> None:
    health = httpx.get(f"{app.url}/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert httpx.get(f"{app.url}/v1/models").status_code == 401
    with pytest.raises(openai.AuthenticationError):
        chat(app.client("wrong-key"), app.model)
    models = [m.id for m in app.client().models.list().data]
    base = app.model
    assert models == [base, f"{base}:demo", f"{base}:demo:1", f"{base}:demo:2", f"{base}:styled", f"{base}:styled:1"]


def test_stream_matches_the_plain_reply(app: App) -> None:
    client = app.client()
    plain = chat(client, app.model, max_tokens=24)
    chunks = list(chat(client, app.model, max_tokens=24, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert text == plain.choices[0].message.content and len(text) > 10
    assert finish == [plain.choices[0].finish_reason] == ["length"]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == plain.usage.completion_tokens == 24


def test_sampling_parameters_are_honoured(app: App) -> None:
    client = app.client()
    three = chat(client, app.model, n=3, temperature=1.0, top_p=0.9, seed=7)
    again = chat(client, app.model, n=3, temperature=1.0, top_p=0.9, seed=7)
    assert len(three.choices) == 3
    assert [c.message.content for c in three.choices] == [c.message.content for c in again.choices]
    assert len({c.message.content for c in three.choices}) > 1  # sampled, not three greedy copies
    stopped = client.completions.create(model=app.model, prompt="One, two, three, four,", max_tokens=LIMIT,
                                        temperature=0, stop=[","])  # fmt: skip
    assert stopped.choices[0].finish_reason == "stop" and "," not in stopped.choices[0].text
    short = client.completions.create(model=app.model, prompt="Once upon a time", max_tokens=5, temperature=0)
    assert short.usage.completion_tokens == 5 and short.choices[0].finish_reason == "length"


def test_adapters_change_the_answer_and_bring_their_chat_template(app: App) -> None:
    from transformers import AutoTokenizer

    client = app.client()
    models = (app.model, f"{app.model}:demo:1", f"{app.model}:demo")
    answers = {m: chat(client, m) for m in models}
    assert answers[f"{app.model}:demo"].model == f"{app.model}:demo:2"  # the newest checkpoint
    texts = {m: a.choices[0].message.content for m, a in answers.items()}
    assert len(set(texts.values())) == 3, texts
    assert {m: chat(client, m).choices[0].message.content for m in models} == texts  # stable once loaded
    tokenizer = AutoTokenizer.from_pretrained(app.base)
    for model, template in ((app.model, None), (f"{app.model}:styled", PLAIN_TEMPLATE)):
        text = tokenizer.apply_chat_template(
            QUESTION, chat_template=template, tokenize=False, add_generation_prompt=True
        )
        expected = len(tokenizer(text, add_special_tokens=False)["input_ids"])
        assert chat(client, model).usage.prompt_tokens == expected, model
    # A client cannot swap the template of the model it calls.
    forced = chat(client, app.model, extra_body={"chat_template": PLAIN_TEMPLATE})
    assert forced.usage.prompt_tokens == answers[app.model].usage.prompt_tokens


def test_checkpoints_written_while_serving_are_servable_at_once(app: App) -> None:
    client = app.client()
    app.checkpoint(app.base, app.runs / "demo", 3, seed=4)
    app.checkpoint(app.base, app.root / "later", 5, seed=5)
    assert chat(client, f"{app.model}:demo").model == f"{app.model}:demo:3"
    assert chat(client, f"{app.model}:later").model == f"{app.model}:later:5"
    assert {f"{app.model}:demo:3", f"{app.model}:later:5"} <= {m.id for m in client.models.list().data}


def test_bad_requests_get_clear_4xx_answers(app: App) -> None:
    client = app.client(max_retries=0)
    with pytest.raises(openai.BadRequestError, match=f"above this endpoint's limit of {LIMIT}"):
        chat(client, app.model, max_tokens=LIMIT + 1)
    with pytest.raises(openai.BadRequestError, match="maximum context length is 512"):
        client.chat.completions.create(model=app.model, messages=[{"role": "user", "content": "hi " * 600}])
    with pytest.raises(openai.BadRequestError, match="an adapter is named"):
        chat(client, f"{app.model}:../demo")
    with pytest.raises(openai.NotFoundError, match="has no checkpoint at step 9"):
        chat(client, f"{app.model}:demo:9")
    with pytest.raises(openai.NotFoundError):
        chat(client, "some-other-model")
    unbounded = chat(client, app.model, max_tokens=None, messages=[{"role": "user", "content": "Tell a long story."}])
    assert unbounded.usage.completion_tokens <= LIMIT


def test_serve_yaml_builds_the_same_app(app: App) -> None:
    import yaml

    from raytune_ft.serve import build_app

    root = Path(__file__).parents[2]
    spec = yaml.safe_load((root / "cluster" / "serve.yaml").read_text())["applications"][0]
    assert spec["import_path"] == "raytune_ft.serve:build_app"
    args = {**spec["args"], "config": str(root / spec["args"]["config"])}
    built = build_app(args)
    assert built._bound_deployment.name.startswith("OpenAIServer:")


def test_an_llm_judge_grades_answers_through_the_endpoint(app: App, monkeypatch: pytest.MonkeyPatch) -> None:
    """The judge reward of online RL against this endpoint: the driver's check reaches it, and every answer gets
    a grade in 0..1 from the served model's reply (the builtin model replies with a number at temperature 0);
    a wrong key or model stops the run with a clear error."""
    from raytune_ft.config import JudgeConfig
    from raytune_ft.rl.judge import check_judge, judge_reward
    from raytune_ft.rl.rewards import RewardError

    monkeypatch.setenv("JUDGE_KEY", KEY)
    cfg = JudgeConfig(base_url=f"{app.url}/v1", model=app.model, api_key_env="JUDGE_KEY", max_tokens=8)
    check_judge(cfg)
    answers = ["2 + 3 = 5. #### 5", "#### 7", "I do not know."]
    grades = judge_reward(cfg)(prompts=["What is 2 + 3?"] * 3, completions=answers, answer=["5"] * 3)
    assert len(grades) == 3 and all(g is not None and 0.0 <= g <= 1.0 for g in grades), grades
    monkeypatch.setenv("JUDGE_KEY", "wrong")
    with pytest.raises(RewardError, match=r"refused the key in \$JUDGE_KEY \(401\)"):
        check_judge(cfg)
    with pytest.raises(RewardError, match=r"refused the key"):
        judge_reward(cfg)(prompts=["q"], completions=["a"], answer=["a"])
    monkeypatch.setenv("JUDGE_KEY", KEY)
    with pytest.raises(RewardError, match=r"no model 'nobody' there"):
        check_judge(cfg.model_copy(update={"model": "nobody"}))


def test_killing_a_replica_under_16_streams_recovers(app: App) -> None:
    import ray
    from ray import serve

    client = app.client(max_retries=0, timeout=120)
    started = threading.Barrier(17)

    def stream(i: int) -> str:
        chunks = chat(client, app.model, max_tokens=48, temperature=0.8, seed=i, stream=True)
        pieces = []
        try:
            for n, chunk in enumerate(chunks):
                if n == 1:
                    started.wait(timeout=120)
                pieces += [c.delta.content or "" for c in chunk.choices]
        except (openai.APIError, httpx.HTTPError) as err:
            return f"error: {type(err).__name__}"
        return "".join(pieces)

    with ThreadPoolExecutor(16) as pool:
        futures = [pool.submit(stream, i) for i in range(16)]
        started.wait(timeout=180)  # every stream has its first tokens
        victim = next(a for a in ray.util.list_named_actors(all_namespaces=True) if "OpenAIServer" in a["name"])
        ray.kill(ray.get_actor(victim["name"], namespace=victim["namespace"]), no_restart=True)
        outcomes = [f.result(timeout=300) for f in futures]
    assert all(outcomes), outcomes  # every stream ended, none hung
    assert sum(not o.startswith("error:") for o in outcomes) >= 1  # the surviving replica's streams finished
    # New requests succeed at once on the survivor, and Serve brings the deployment back to two replicas.
    assert all(chat(client, app.model).choices[0].message.content for _ in range(4))
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        status = serve.status().applications["raytune-ft"]
        servers = [d for name, d in status.deployments.items() if name.startswith("OpenAIServer")]
        if status.status == "RUNNING" and servers[0].replica_states.get("RUNNING") == 2:
            break
        time.sleep(2)
    else:
        pytest.fail(f"the deployment did not recover: {serve.status().applications['raytune-ft']}")
    assert chat(client, app.model).usage.completion_tokens == 16
