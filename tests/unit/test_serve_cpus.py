"""Keeping an endpoint's processes off vLLM's compute cores, on a real process tree: a parent whose
children are a worker titled and bound the way vLLM binds its workers, and other processes, each with
a second thread."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import psutil
import pytest

from raytune_ft.serve.cpus import keep_off_engine_cores, starts_processes

pytestmark = pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores to keep apart")

ALL = set(os.sched_getaffinity(0))
ENGINE = {min(ALL)}
SPARE = ALL - ENGINE
WORKER = ("VLLM::Worker_TP0", str(min(ALL)))
CHILD = """
import os, sys, threading, time, setproctitle
title, bind = sys.argv[1], sys.argv[2]
if bind:
    os.sched_setaffinity(0, {int(c) for c in bind.split(",")})
setproctitle.setproctitle(title)
threading.Thread(target=time.sleep, args=(120,), daemon=True).start()
print("ready", flush=True)
time.sleep(120)
"""
PARENT = """
import subprocess, sys, time
pairs = list(zip(sys.argv[2::2], sys.argv[3::2]))
children = [subprocess.Popen([sys.executable, "-c", sys.argv[1], *pair], stdout=subprocess.PIPE) for pair in pairs]
for child in children:
    child.stdout.readline()
print("ready", flush=True)
time.sleep(120)
"""
Tree = Callable[..., psutil.Process]


@pytest.fixture
def tree() -> Iterator[Tree]:
    """Starts a parent with children ``(title, cores)`` (cores "" keeps every core); all are killed after."""
    started: list[subprocess.Popen[str]] = []

    def start(*children: tuple[str, str]) -> psutil.Process:
        args = [arg for child in children for arg in child]
        parent = subprocess.Popen([sys.executable, "-c", PARENT, CHILD, *args], stdout=subprocess.PIPE, text=True)
        started.append(parent)
        assert parent.stdout is not None and parent.stdout.readline() == "ready\n"
        return psutil.Process(parent.pid)

    yield start
    for parent in started:
        for child in psutil.Process(parent.pid).children(recursive=True):
            child.kill()
        parent.kill()
        parent.wait()


def thread_cores(root: psutil.Process) -> dict[str, list[set[int]]]:
    """Every thread's cores, by process title (the root is "root")."""
    return {
        "root" if p.pid == root.pid else p.cmdline()[0]: [os.sched_getaffinity(t.id) for t in p.threads()]
        for p in [root, *root.children(recursive=True)]
    }


def test_every_thread_but_the_workers_moves_to_the_spare_cores(tree: Tree) -> None:
    root = tree(WORKER, ("VLLM::EngineCore", ""), ("ray::ServeReplica:app", ""))
    placement = keep_off_engine_cores(root.pid, include_root=True)
    assert placement is not None
    assert (placement.engine, placement.spare) == (ENGINE, SPARE)
    assert {"VLLM::EngineCore", "ray::ServeReplica:app"} < set(placement.moved) and len(placement.moved) == 3
    found = thread_cores(root)
    assert found.pop("VLLM::Worker_TP0") == [ENGINE, ENGINE]  # the worker and its threads stay
    assert all(len(threads) >= 1 and all(c == SPARE for c in threads) for threads in found.values()), found
    assert len(found["VLLM::EngineCore"]) == 2  # not only the main thread
    assert f"engine on cores {sorted(ENGINE)}" in placement.describe()
    # Running it again changes nothing.
    assert keep_off_engine_cores(root.pid, include_root=True) == placement
    assert thread_cores(root) == {**found, "VLLM::Worker_TP0": [ENGINE, ENGINE]}


def test_the_root_and_processes_that_start_engines_keep_every_core(tree: Tree) -> None:
    root = tree(WORKER, ("ray::IDLE", ""), ("ray::ServeController", ""))
    placement = keep_off_engine_cores(root.pid, include_root=False, keep=starts_processes)
    assert placement is not None and placement.moved == ("ray::ServeController",)
    found = thread_cores(root)
    assert found["root"] == [ALL] and found["ray::IDLE"] == [ALL, ALL]
    assert found["ray::ServeController"] == [SPARE, SPARE]


@pytest.mark.parametrize(
    "children",
    [
        pytest.param([("ray::ServeReplica:app", "")], id="no-vllm-worker"),
        pytest.param([("VLLM::Worker_TP0", ""), ("ray::ServeReplica:app", "")], id="worker-not-bound"),
    ],
)
def test_nothing_moves_without_bound_workers(tree: Tree, children: list[tuple[str, str]]) -> None:
    root = tree(*children)
    assert keep_off_engine_cores(root.pid, include_root=True) is None
    assert all(c == ALL for threads in thread_cores(root).values() for c in threads)


def test_a_process_that_ended_is_skipped(tree: Tree) -> None:
    root = tree(WORKER, ("VLLM::EngineCore", ""))
    core = next(p for p in root.children() if p.cmdline()[0] == "VLLM::EngineCore")
    core.kill()  # a zombie until the parent reaps it: psutil still lists it, but it has no threads
    time.sleep(0.2)
    placement = keep_off_engine_cores(root.pid, include_root=True)
    assert placement is not None and "VLLM::EngineCore" not in placement.moved
