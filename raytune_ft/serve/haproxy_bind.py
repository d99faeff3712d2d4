"""Run HAProxy with its stats and Prometheus listeners on the endpoint's host, not on every interface.

Ray Serve's HAProxy config (Ray 2.60's ``ray.serve._private.haproxy_templates``) binds ``listen stats``
to ``*:PORT`` and ``frontend prometheus`` to ``:PORT``, every interface, and has no setting for it.
``serve_env`` points ``RAY_SERVE_HAPROXY_BINARY_PATH`` at a shim that runs this file as a script
(``python -I -S``, so standard library only): it rewrites the config Ray passes with ``-f`` in place,
those binds on the host, under the lock Ray writes it with, and replaces itself with the real HAProxy.
The command line stays Ray's, so Ray still recognises its HAProxy processes by their config path,
and the PID stays the same, so Ray's reloads (``-sf PID``) and stops reach HAProxy as before. Ray
writes the whole file anew before every start and never reads it back.

    haproxy_bind.py HOST REAL_HAPROXY [HAPROXY ARGS...]
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import sys

__all__ = ["bind_in_place", "bind_listeners", "main"]

WILDCARD_BIND = re.compile(rb"^(\s*bind\s+)\*?:(\d+)\b", re.MULTILINE)
"""A ``bind`` on every interface: ``bind *:PORT`` or ``bind :PORT``."""


def bind_listeners(config: bytes, host: str) -> bytes:
    """``config`` (HAProxy's) with every listener bound to all interfaces bound to ``host`` instead."""
    return WILDCARD_BIND.sub(lambda found: found[1] + host.encode() + b":" + found[2], config)


def bind_in_place(path: str, host: str) -> None:
    """Rewrite the config at ``path`` with ``bind_listeners``, holding ``PATH.lock`` as Ray's writer does;
    a reload never reads a half-written file (the new text replaces the old in one rename)."""
    partial = f"{path}.{os.getpid()}"
    with open(f"{path}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            with open(path, "rb") as source:
                config = bind_listeners(source.read(), host)
            with open(partial, "wb") as target:
                target.write(config)
            os.replace(partial, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.remove(partial)


def main(argv: list[str]) -> None:
    """Exec ``REAL_HAPROXY ARGS`` once the ``-f`` config in ``ARGS`` is bound to ``HOST``."""
    host, haproxy, *args = argv
    if "-f" in args[:-1]:
        bind_in_place(args[args.index("-f") + 1], host)
    os.execv(haproxy, [haproxy, *args])


if __name__ == "__main__":
    main(sys.argv[1:])
