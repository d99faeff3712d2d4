"""The fallback engine (Hugging Face ``generate``) behind the same OpenAI routes, on local Ray with the
tiny model, through the real ``openai`` client: what a machine without vLLM gets. It also covers
``serve.ingress: proxy``, Ray Serve's HTTP proxy, which ``auto`` falls back to where there is no HAProxy."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from raytune_ft.config import load_config

pytestmark = pytest.mark.integration

KEY = "hf-key"
QUESTION = [{"role": "user", "content": "Who are you?"}]


@pytest.fixture(scope="module")
def serve_ingress() -> str:
    """Serve's own HTTP proxy (``serve.ingress: proxy``): the other endpoint tests go through HAProxy."""
    return "proxy"


@pytest.fixture(scope="module")
def hf_app(
    local_ray: None, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory, adapter_checkpoint: Any,
    free_port: Any,
) -> Iterator[tuple[str, str, Path]]:  # fmt: skip
    from ray import serve

    from raytune_ft.serve import plan_serving, start_server

    runs = tmp_path_factory.mktemp("hf-runs")
    adapter_checkpoint(tiny_model_dir, runs / "demo", 1, seed=1, source=str(tiny_model_dir))
    cfg = load_config(None, [
        f"model.source={tiny_model_dir}", f"serve.adapters={{demo: {runs / 'demo'}}}", "serve.engine=hf",
        f"serve.port={free_port()}", f"serve.api_key={KEY}", "serve.max_tokens_limit=32", "serve.max_model_len=256",
        "serve.dtype=float32",
    ])  # fmt: skip
    plan = plan_serving(cfg)
    yield start_server(plan), plan.model_id, runs
    serve.shutdown()


def test_hf_engine_answers_like_the_vllm_app(hf_app: tuple[str, str, Path]) -> None:
    url, base, _ = hf_app
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0)
    assert httpx.get(f"{url}/health").json()["status"] == "ok"
    assert httpx.get(f"{url}/v1/models").status_code == 401
    assert [m.id for m in client.models.list().data] == [base, f"{base}:demo", f"{base}:demo:1"]

    plain = client.chat.completions.create(model=base, messages=QUESTION, max_tokens=12, temperature=0)
    chunks = list(client.chat.completions.create(model=base, messages=QUESTION, max_tokens=12, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))  # fmt: skip
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == plain.choices[0].message.content and plain.usage.completion_tokens == 12
    assert chunks[-1].usage.completion_tokens == 12 and plain.choices[0].finish_reason == "length"

    adapted = client.chat.completions.create(model=f"{base}:demo", messages=QUESTION, max_tokens=12, temperature=0)
    assert adapted.model == f"{base}:demo:1" and adapted.choices[0].message.content != plain.choices[0].message.content
    again = client.chat.completions.create(model=base, messages=QUESTION, max_tokens=12, temperature=0)
    assert again.choices[0].message.content == plain.choices[0].message.content  # the adapter is off again

    sampled = [client.completions.create(model=base, prompt="Once", max_tokens=8, n=2, seed=3, temperature=1.0)
               for _ in range(2)]  # fmt: skip
    assert [c.text for c in sampled[0].choices] == [c.text for c in sampled[1].choices] and len(sampled[0].choices) == 2

    with pytest.raises(openai.BadRequestError, match="limit of 32"):
        client.chat.completions.create(model=base, messages=QUESTION, max_tokens=33)
    with pytest.raises(openai.NotFoundError, match="no checkpoint at step 7"):
        client.chat.completions.create(model=f"{base}:demo:7", messages=QUESTION, max_tokens=4)
    with pytest.raises(openai.BadRequestError, match="maximum context length is 256"):
        client.completions.create(model=base, prompt="hi " * 300, max_tokens=4)


def test_dashboard_chat_streams_a_multi_turn_conversation(hf_app: tuple[str, str, Path]) -> None:
    """The panel's Chat page (run by Streamlit's AppTest) lists the endpoint's models and streams
    the same greedy answer the ``openai`` client gets, turn after turn."""
    from streamlit.testing.v1 import AppTest

    url, base, _ = hf_app
    app = AppTest.from_string("from raytune_ft.dashboard.views import chat\nchat.render()\n", default_timeout=120)
    app.session_state["endpoint"], app.session_state["api_key"] = f"{url}/v1", KEY
    app.run()
    assert app.selectbox(key="chat_model").options == [base, f"{base}:demo", f"{base}:demo:1"]
    app.selectbox(key="chat_model").set_value(f"{base}:demo")
    app.slider(key="chat_temperature").set_value(0.0)
    app.number_input(key="chat_max_tokens").set_value(12)
    app.chat_input[0].set_value("Who are you?").run()
    assert not app.exception and not app.error
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0)
    expected = client.chat.completions.create(model=f"{base}:demo", messages=QUESTION, max_tokens=12, temperature=0,
                                              top_p=0.95).choices[0].message.content  # fmt: skip
    assert [m.name for m in app.chat_message] == ["user", "assistant"]
    assert app.chat_message[1].markdown[0].value.strip() == expected.strip() and expected.strip()
    app.chat_input[0].set_value("And then?").run()
    assert [m.name for m in app.chat_message] == ["user", "assistant", "user", "assistant"]
    assert app.chat_message[3].markdown[0].value, "the second turn is answered too"
    assert len(app.session_state["chat_history"]) == 4
