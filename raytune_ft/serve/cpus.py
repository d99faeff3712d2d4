"""Keep an endpoint's other processes off the cores vLLM's CPU workers compute on.

On CPU, vLLM binds each worker's compute threads to cores of their own (``VLLM_CPU_OMP_THREADS_BIND``;
``auto`` takes all cores but one) and leaves the rest to "other processes", but nothing keeps those
processes away from the bound cores. Behind Ray there are a dozen: GCS, raylet, agents, Serve's
controller, HAProxy, the replica's HTTP frontend and the engine's scheduler. Ray starts actors, and so
the engine, at nice 15, so any of them at nice 0 takes the core outright, and the whole batch's
decode step waits. Moving them to the spare cores leaves the compute cores to the engine.

Two places move processes, each a tree it owns: a replica moves itself and its engine's scheduler once
its engine has started (on every node, restarts included), and ``raytune-ft serve`` moves the local Ray
it started. Processes that start others stay where they are (raylet, idle Ray workers): a new
engine inherits their cores, and vLLM binds only to cores it inherits.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import psutil

__all__ = ["WORKER_TITLE", "Placement", "engine_cores", "keep_off_engine_cores", "starts_processes"]

WORKER_TITLE = "VLLM::Worker"
"""How vLLM titles its worker processes (``setproctitle``, a vLLM dependency)."""


@dataclass(frozen=True)
class Placement:
    engine: frozenset[int]
    """Cores vLLM's workers are bound to."""
    spare: frozenset[int]
    """Cores the other processes were moved to."""
    moved: tuple[str, ...]
    """Names of the processes moved."""

    def describe(self) -> str:
        names = ", ".join(sorted(set(self.moved)))
        return f"engine on cores {sorted(self.engine)}; moved to cores {sorted(self.spare)}: {names}"


def engine_cores(processes: Iterable[psutil.Process]) -> frozenset[int]:
    """The cores vLLM's workers among ``processes`` are bound to (empty when there are none)."""
    cores: set[int] = set()
    for process in processes:
        if _is_worker(process):
            with contextlib.suppress(psutil.Error):
                cores |= set(process.cpu_affinity())
    return frozenset(cores)


def keep_off_engine_cores(
    root: int, *, include_root: bool, keep: Callable[[psutil.Process], bool] = lambda _: False
) -> Placement | None:
    """Move ``root``'s process tree, all threads, off the cores its vLLM workers are bound to.

    The workers stay, and so does every process ``keep`` selects. None when nothing moves: no workers,
    workers not bound (``VLLM_CPU_OMP_THREADS_BIND=nobind``), or bound to every core ``root`` may use.
    """
    top = psutil.Process(root)
    tree = [top, *top.children(recursive=True)] if include_root else top.children(recursive=True)
    engine = engine_cores(tree)
    spare = frozenset(top.cpu_affinity()) - engine
    if not engine or not spare:
        return None
    moved = [_label(p) for p in tree if not _is_worker(p) and not keep(p) and _move(p, spare)]
    return Placement(engine=engine, spare=spare, moved=tuple(moved))


def starts_processes(process: psutil.Process) -> bool:
    """Ray processes that start others (raylet, idle workers that may become replicas): they keep every core."""
    title = _title(process)
    return title.startswith("ray::IDLE") or title.split(" ")[0].endswith("/raylet")


def _move(process: psutil.Process, cores: frozenset[int]) -> bool:
    """Set every thread's affinity (a process's own is only its main thread's); False if it is gone."""
    try:
        threads = [thread.id for thread in process.threads()]
    except psutil.Error:
        return False
    for thread in threads:
        with contextlib.suppress(OSError):  # a thread that ended meanwhile
            os.sched_setaffinity(thread, cores)
    return True


def _is_worker(process: psutil.Process) -> bool:
    return _title(process).startswith(WORKER_TITLE)


def _label(process: psutil.Process) -> str:
    """A short name: Ray's and vLLM's titles (``ray::ServeController``), else the executable's name."""
    title = _title(process).split(" ")[0]
    return title if "::" in title else _name(process)


def _name(process: psutil.Process) -> str:
    try:
        return str(process.name())
    except psutil.Error:
        return ""


def _title(process: psutil.Process) -> str:
    """The process's title (its command line, which ``setproctitle`` rewrites); empty once it is gone."""
    try:
        return " ".join(process.cmdline())[:60] or str(process.name())
    except psutil.Error:
        return ""
