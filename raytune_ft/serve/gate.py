"""What every engine's front door checks before a request reaches a model: the API key, the token
limit and the model name. Light on purpose (starlette only), so the vLLM ingress and the
transformers fallback share it without importing each other's engine.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .adapters import AdapterCatalog, InvalidModelName, UnknownModel

__all__ = ["BearerKeyMiddleware", "RequestGate", "RequestRejected"]

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Awaitable[None]]


class RequestRejected(Exception):
    """A request refused with an HTTP status and a message for the client."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "code": self.status}}


@dataclass(frozen=True)
class RequestGate:
    catalog: AdapterCatalog
    """The served adapters (names are resolved against it)."""
    max_tokens: int
    """``serve.max_tokens_limit``."""

    def check_limit(self, asked: int | None) -> None:
        if asked is not None and asked > self.max_tokens:
            raise RequestRejected(
                400,
                f"max_tokens {asked} is above this endpoint's limit of {self.max_tokens} (serve.max_tokens_limit); "
                "ask for fewer tokens",
            )

    def resolve(self, model: str | None) -> tuple[str | None, Path | None]:
        """An adapter name -> its versioned id and checkpoint folder; the base (or None) -> itself, no folder.

        Any other name is refused (404).
        """
        base = self.catalog.base
        if model is None or model == base:
            return model, None
        if not model.startswith(f"{base}:"):
            raise RequestRejected(
                404, f"model {model!r} is not served here; GET /v1/models lists them", "NotFoundError"
            )
        try:
            resolved, folder = self.catalog.lookup(model)
            return resolved, folder
        except InvalidModelName as err:
            raise RequestRejected(400, str(err)) from None
        except UnknownModel as err:
            raise RequestRejected(404, str(err), "NotFoundError") from None


class BearerKeyMiddleware:
    """Refuses requests without ``Authorization: Bearer KEY`` (HTTP 401), except ``/health`` and CORS
    preflights. Compares SHA-256 digests in constant time; the replica never holds the key itself."""

    def __init__(self, app: ASGIApp, *, digest: str) -> None:
        self.app = app
        self.digest = digest

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("method") == "OPTIONS" or _route(scope) == "/health":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        scheme, _, token = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
        presented = hashlib.sha256(token.strip().encode()).hexdigest() if scheme.lower() == "bearer" else ""
        if hmac.compare_digest(presented, self.digest):
            await self.app(scope, receive, send)
            return
        refusal = RequestRejected(401, "missing or wrong API key: send 'Authorization: Bearer KEY'")
        await send({"type": "http.response.start", "status": 401,
                    "headers": [(b"content-type", b"application/json"), (b"www-authenticate", b"Bearer")]})  # fmt: skip
        await send({"type": "http.response.body", "body": json.dumps(refusal.body()).encode()})


def _route(scope: Scope) -> str:
    path, root = str(scope.get("path", "")), str(scope.get("root_path", ""))
    return (path[len(root) :] if root and path.startswith(root) else path).rstrip("/") or "/"
