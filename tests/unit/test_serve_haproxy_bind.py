"""HAProxy's listeners stay on the endpoint's host: the shim ``serve_env`` writes rewrites the wildcard
binds of Ray's HAProxy config in place and becomes the real HAProxy, with Ray's own command line and
PID (Ray finds its HAProxy processes by their config path and reloads them by PID). A stand-in HAProxy
records what it was given; the real one is checked in test_serve_cli.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from raytune_ft.serve.haproxy_bind import bind_in_place, bind_listeners

CONFIG = b"""\
frontend prometheus
    bind :9101
    mode http
frontend http_frontend
    bind 127.0.0.1:8000
listen stats
  bind *:8404
  stats enable
"""


def _binds(config: bytes) -> list[str]:
    return [line.split()[1] for line in config.decode().splitlines() if line.split()[:1] == ["bind"]]


def test_wildcard_binds_move_to_the_host_and_others_stay() -> None:
    bound = bind_listeners(CONFIG, "127.0.0.1")
    assert _binds(bound) == ["127.0.0.1:9101", "127.0.0.1:8000", "127.0.0.1:8404"]
    assert _binds(bind_listeners(CONFIG, "10.0.0.5")) == ["10.0.0.5:9101", "127.0.0.1:8000", "10.0.0.5:8404"]
    assert bound.replace(b"127.0.0.1", b"") == CONFIG.replace(b"127.0.0.1", b"").replace(b"*", b"")
    assert bind_listeners(bound, "127.0.0.1") == bound


def test_rays_own_config_keeps_every_listener_on_the_host(tmp_path: Path) -> None:
    """The config Ray's HAProxy manager writes (its template, this Ray's version), gRPC frontend included:
    after the rewrite no listener is left on every interface."""
    from ray.serve._private.haproxy import HAProxyApi, HAProxyConfig
    from ray.serve.config import HTTPOptions, gRPCOptions

    cfg = HAProxyConfig(
        http_options=HTTPOptions(host="127.0.0.1", port=8000),
        grpc_options=gRPCOptions(port=9000, grpc_servicer_functions=["any.add_servicer"]),
        socket_path=str(tmp_path / "admin.sock"), metrics_socket_path=str(tmp_path / "metrics.sock"),
        server_state_base=str(tmp_path), server_state_file=str(tmp_path / "server-state"),
    )  # fmt: skip
    config = tmp_path / "haproxy.cfg"
    HAProxyApi(cfg, config_file_path=str(config))._generate_config_file_internal()
    assert any(bind.startswith(("*:", ":")) for bind in _binds(config.read_bytes())), "Ray binds everywhere"

    bind_in_place(str(config), "127.0.0.1")
    binds = _binds(config.read_bytes())
    assert len(binds) == 4 and all(bind.startswith("127.0.0.1:") for bind in binds), binds


def test_the_shim_runs_haproxy_on_the_bound_config_in_the_same_process(tmp_path: Path) -> None:
    from raytune_ft.serve import app

    record = tmp_path / "record.json"
    fake = tmp_path / "fake-haproxy"
    seen = "{'argv': sys.argv[1:], 'pid': os.getpid()}"
    fake.write_text(f"#!{sys.executable}\nimport json, os, sys\njson.dump({seen}, open({str(record)!r}, 'w'))\n")
    fake.chmod(0o755)
    config = tmp_path / "haproxy.cfg"
    config.write_bytes(CONFIG)
    shim = app._bound_haproxy(str(tmp_path), "127.0.0.1", str(fake))
    assert os.access(shim, os.X_OK)

    started = subprocess.Popen([shim, "-db", "-f", str(config), "-sf", "123"])
    assert started.wait(timeout=60) == 0
    seen_by_haproxy = json.loads(record.read_text())
    assert seen_by_haproxy == {"argv": ["-db", "-f", str(config), "-sf", "123"], "pid": started.pid}
    assert config.read_bytes() == bind_listeners(CONFIG, "127.0.0.1")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "fake-haproxy", "haproxy", "haproxy.cfg", "haproxy.cfg.lock", "record.json"]  # fmt: skip


def test_without_a_config_argument_everything_passes_through(tmp_path: Path) -> None:
    from raytune_ft.serve import app

    shim = app._bound_haproxy(str(tmp_path), "127.0.0.1", "/bin/echo")
    assert subprocess.run([shim, "-v"], capture_output=True, text=True, check=True).stdout == "-v\n"
    assert subprocess.run([shim, "-f"], capture_output=True, text=True, check=True).stdout == "-f\n"


def test_haproxy_ingress_without_haproxy_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from raytune_ft.config import InputError
    from raytune_ft.serve import app

    monkeypatch.setattr(app, "_haproxy_binary", lambda: None)
    assert app.serve_env("auto") == app.SERVE_ENV, "auto falls back to Serve's proxy"
    with pytest.raises(InputError, match=r"serve\.ingress: haproxy: no HAProxy binary.*serve\.ingress=proxy"):
        app.serve_env("haproxy")
