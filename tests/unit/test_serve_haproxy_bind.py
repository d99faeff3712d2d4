"""HAProxy's listeners stay on the endpoint's host: the shim ``serve_env`` writes rewrites the wildcard
binds of Ray's HAProxy config and becomes the real HAProxy (same PID, so Ray's reloads reach it). A
stand-in HAProxy records what it was given; the real one is checked in test_serve_cli.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from raytune_ft.serve.haproxy_bind import bind_listeners

RAY_CONFIG = """\
frontend prometheus
    bind :9101
    mode http
frontend http_frontend
    bind 127.0.0.1:8000
listen stats
  bind *:8404
  stats enable
"""


def test_wildcard_binds_move_to_the_host_and_others_stay() -> None:
    bound = bind_listeners(RAY_CONFIG, "127.0.0.1")
    binds = [line.split()[1] for line in bound.splitlines() if line.split()[:1] == ["bind"]]
    assert binds == ["127.0.0.1:9101", "127.0.0.1:8000", "127.0.0.1:8404"]
    assert bind_listeners(RAY_CONFIG, "10.0.0.5").count("10.0.0.5") == 2
    assert bound.replace("127.0.0.1", "") == RAY_CONFIG.replace("127.0.0.1", "").replace("*", "")


def test_the_shim_runs_haproxy_on_a_bound_copy_in_the_same_process(tmp_path: Path) -> None:
    from raytune_ft.serve import app

    record = tmp_path / "record.json"
    fake = tmp_path / "fake-haproxy"
    seen = "{'argv': sys.argv[1:], 'pid': os.getpid()}"
    fake.write_text(f"#!{sys.executable}\nimport json, os, sys\njson.dump({seen}, open({str(record)!r}, 'w'))\n")
    fake.chmod(0o755)
    config = tmp_path / "haproxy.cfg"
    config.write_text(RAY_CONFIG)
    shim = app._bound_haproxy(str(tmp_path), "127.0.0.1", str(fake))
    assert os.access(shim, os.X_OK)

    started = subprocess.Popen([shim, "-db", "-f", str(config), "-sf", "123"])
    assert started.wait(timeout=60) == 0
    seen = json.loads(record.read_text())
    assert seen == {"argv": ["-db", "-f", f"{config}.bound", "-sf", "123"], "pid": started.pid}
    assert Path(f"{config}.bound").read_text() == bind_listeners(RAY_CONFIG, "127.0.0.1")
    assert config.read_text() == RAY_CONFIG, "Ray's own file is left as written"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "fake-haproxy",
        "haproxy",
        "haproxy.cfg",
        "haproxy.cfg.bound",
        "record.json",
    ]


def test_without_a_config_argument_everything_passes_through(tmp_path: Path) -> None:
    from raytune_ft.serve import app

    shim = app._bound_haproxy(str(tmp_path), "127.0.0.1", "/bin/echo")
    out = subprocess.run([shim, "-v"], capture_output=True, text=True, check=True).stdout
    assert out == "-v\n"


def test_haproxy_ingress_without_haproxy_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from raytune_ft.config import InputError
    from raytune_ft.serve import app

    monkeypatch.setattr(app, "_haproxy_binary", lambda: None)
    assert app.serve_env("auto") == app.SERVE_ENV, "auto falls back to Serve's proxy"
    with pytest.raises(InputError, match=r"serve\.ingress: haproxy: no HAProxy binary.*serve\.ingress=proxy"):
        app.serve_env("haproxy")
