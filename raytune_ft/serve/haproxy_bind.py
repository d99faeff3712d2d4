"""Run HAProxy with its stats and Prometheus listeners on the endpoint's host, not on every interface.

Ray Serve's HAProxy config (Ray 2.60's ``ray.serve._private.haproxy_templates``) binds ``listen stats``
to ``*:PORT`` and ``frontend prometheus`` to ``:PORT``, every interface, and has no setting for it.
``serve_env`` points ``RAY_SERVE_HAPROXY_BINARY_PATH`` at a shim that runs this file as a script
(``python -I -S``, so standard library only): it writes a copy of the config Ray passes with ``-f``,
those binds on the host, and replaces itself with the real HAProxy reading the copy. The PID stays the
same, so Ray's reloads (``-sf PID``) and stops reach HAProxy as before; other arguments pass unchanged.

    haproxy_bind.py HOST REAL_HAPROXY [HAPROXY ARGS...]
"""

from __future__ import annotations

import os
import re
import sys

__all__ = ["bind_listeners", "main"]

WILDCARD_BIND = re.compile(r"^(\s*bind\s+)\*?:(\d+)\b", re.MULTILINE)
"""A ``bind`` on every interface: ``bind *:PORT`` or ``bind :PORT``."""


def bind_listeners(config: str, host: str) -> str:
    """``config`` (HAProxy's) with every listener bound to all interfaces bound to ``host`` instead."""
    return WILDCARD_BIND.sub(lambda found: f"{found[1]}{host}:{found[2]}", config)


def main(argv: list[str]) -> None:
    """Exec ``REAL_HAPROXY ARGS``, its ``-f`` config rewritten by ``bind_listeners`` to ``CONFIG.bound``."""
    host, haproxy, *args = argv
    if "-f" in args:
        at = args.index("-f") + 1
        with open(args[at]) as source:
            config = bind_listeners(source.read(), host)
        bound, partial = f"{args[at]}.bound", f"{args[at]}.bound.{os.getpid()}"
        with open(partial, "w") as target:
            target.write(config)
        os.replace(partial, bound)  # a reload never reads a half-written copy
        args[at] = bound
    os.execv(haproxy, [haproxy, *args])


if __name__ == "__main__":
    main(sys.argv[1:])
