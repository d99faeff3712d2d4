"""Chat's side of the serve endpoint: the models it lists and a streamed reply, through the real
``openai`` client, so the panel talks to ``raytune-ft serve`` exactly as users' code does."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

__all__ = ["client_for", "list_models", "stream_reply"]


def client_for(endpoint: str, api_key: str | None) -> Any:
    import openai

    return openai.OpenAI(base_url=endpoint, api_key=api_key or "none", timeout=60.0, max_retries=0)


def list_models(client: Any) -> list[str]:
    """Ids from ``/v1/models``: base models, exports and adapters (``BASE:RUN``)."""
    return [model.id for model in client.models.list().data]


def stream_reply(
    client: Any, model: str, messages: list[dict[str, str]], temperature: float, top_p: float, max_tokens: int
) -> Iterator[str]:
    """The assistant's answer to ``messages`` as its text arrives."""
    stream = client.chat.completions.create(
        model=model, messages=messages, temperature=temperature, top_p=top_p, max_tokens=max_tokens, stream=True
    )
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            yield chunk.choices[0].delta.content
