"""Weight sync: how the policy's weights reach the rollout engines after each update (``rollout.weight_sync``).

``store``: rank 0 puts the weights' files in Ray's object store; each engine pulls the newest when a call needs
them. ``broadcast``: rank 0 and the engines form a process group of their own (NCCL between GPUs, gloo on CPU)
and the whole model's tensors go in buckets straight into every engine's model, while all workers wait.
"""

from __future__ import annotations

import datetime
import math
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

import torch

from raytune_ft.config import JobConfig
from raytune_ft.models import save_weights

if TYPE_CHECKING:
    from raytune_ft.train import StepCore
    from raytune_ft.train.loop import WorkerContext

__all__ = [
    "SYNCS",
    "BroadcastSync",
    "EngineBehind",
    "GroupAddress",
    "Meta",
    "StoreSync",
    "WeightSync",
    "buckets",
    "group_backend",
    "join_group",
    "policy_weights",
    "receive_weights",
    "send_weights",
    "weight_sync",
]

BUCKET_BYTES = 256 * 2**20
"""Largest tensor a broadcast sends at once: consecutive weights of one dtype, flattened together."""

GROUP_TIMEOUT = datetime.timedelta(seconds=600)
"""How long a member of a broadcast group waits for the others (joining, then each broadcast)."""


class EngineBehind(RuntimeError):
    """A call needs policy weights a (restarted) engine never received under ``rollout.weight_sync: broadcast``."""


def weight_sync(cfg: JobConfig) -> Literal["store", "broadcast"]:
    """``rollout.weight_sync`` resolved: ``auto`` broadcasts whole weights between GPUs (a whole one per engine:
    NCCL takes one GPU per member), else uses the store."""
    chosen = cfg.rollout.weight_sync
    if chosen != "auto":
        return chosen
    gpus = cfg.scaling.use_gpu and cfg.rollout.gpus_per_engine >= 1
    return "broadcast" if gpus and cfg.adapter.type != "lora" else "store"


class WeightSync(Protocol):
    """The training workers' side of a sync: every worker calls ``publish`` after each update."""

    def publish(self, core: StepCore, version: int, first: bool = False) -> float:
        """Make the policy's weights version ``version`` for the engines (``first``: the workers just started,
        perhaps resumed from a checkpoint older than what the engines hold); returns the seconds it took."""
        ...


def policy_weights(model: Any, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The weights of ``model``'s state dict ``weights`` that the engines load, by the base model's names (PPO's
    policy without its critic's value head)."""
    language = getattr(model, "language_weights", None)
    return language(weights) if language is not None else weights


class StoreSync:
    """Rank 0 puts the weights' files in the object store and registers them with the run's ``WeightStore``."""

    def __init__(self, ctx: WorkerContext) -> None:
        self.store = ctx.extra["store"]

    def publish(self, core: StepCore, version: int, first: bool = False) -> float:
        import ray

        start = time.perf_counter()
        weights = core.strategy.full_state_dict(core.model)  # gathering may be collective: every worker calls it
        if weights is None:
            return time.perf_counter() - start
        with tempfile.TemporaryDirectory(prefix="raytune_ft-publish-") as tmp:
            save_weights(core.strategy.unwrap(core.model), Path(tmp), weights)
            files = {f.name: f.read_bytes() for f in Path(tmp).iterdir() if f.suffix in (".safetensors", ".json")}
        ray.get(self.store.publish.remote(version, [ray.put(files)], first))
        return time.perf_counter() - start


def group_backend(cfg: JobConfig) -> str:
    """The broadcast group's backend: NCCL when the workers and the engines hold GPUs, else gloo."""
    return "nccl" if cfg.scaling.use_gpu and cfg.rollout.gpus_per_engine > 0 else "gloo"


@dataclass(frozen=True)
class GroupAddress:
    """Where a broadcast group meets (the trainer's ``TCPStore``), its size and its backend; ``nonce`` tells a
    new group from an old one that met at the same port."""

    host: str
    port: int
    size: int
    backend: str
    nonce: str = field(default_factory=lambda: uuid.uuid4().hex)


def join_group(address: GroupAddress, rank: int, store: Any = None) -> Any:
    """This process's member of the group at ``address`` (returns once every member has joined)."""
    import torch.distributed as dist

    if store is None:
        store = dist.TCPStore(  # type: ignore[attr-defined]
            address.host, address.port, is_master=False, timeout=GROUP_TIMEOUT
        )
    prefixed = dist.PrefixStore(f"raytune_ft-weights-{address.nonce}", store)  # type: ignore[attr-defined]
    if address.backend == "nccl":
        options = dist.ProcessGroupNCCL.Options()
        options._timeout = GROUP_TIMEOUT
        return dist.ProcessGroupNCCL(prefixed, rank, address.size, options)
    return dist.ProcessGroupGloo(prefixed, rank, address.size, GROUP_TIMEOUT)


Meta = Sequence[tuple[str, str, tuple[int, ...]]]
"""The broadcast weights in order: name, dtype (``float32``) and shape."""


def buckets(meta: Meta, limit: int = BUCKET_BYTES) -> list[list[int]]:
    """``meta``'s indices in broadcasts: runs of consecutive weights of one dtype, each at most ``limit`` bytes
    (a larger weight alone)."""
    out: list[list[int]] = []
    size, dtype = 0, None
    for i, (_, kind, shape) in enumerate(meta):
        nbytes = torch.empty((), dtype=getattr(torch, kind)).element_size() * math.prod(shape)
        if not out or kind != dtype or size + nbytes > limit:
            out.append([])
            size, dtype = 0, kind
        out[-1].append(i)
        size += nbytes
    return out


def receive_weights(group: Any, meta: Meta, device: str) -> Iterator[tuple[str, torch.Tensor]]:
    """The weights rank 0 broadcasts to ``group`` (``meta`` says which), as (name, tensor) on ``device``, one
    bucket at a time (a consumer that loads each as it comes holds one bucket, not a second model)."""
    for bucket in buckets(meta):
        sizes = [math.prod(meta[i][2]) for i in bucket]
        flat = torch.empty(sum(sizes), dtype=getattr(torch, meta[bucket[0]][1]), device=device)
        group.broadcast(flat, root=0).wait()
        if flat.is_cuda:  # NCCL's wait orders the stream only: hold here until the bucket has arrived
            torch.cuda.current_stream().synchronize()
        for i, part in zip(bucket, flat.split(sizes), strict=True):
            yield meta[i][0], part.view(meta[i][2])


def send_weights(group: Any, weights: dict[str, torch.Tensor], meta: Meta, device: torch.device) -> None:
    """Broadcast ``weights`` (in ``meta``'s order and buckets) from this process, rank 0 of ``group``."""
    for bucket in buckets(meta):
        flat = torch.cat([weights[meta[i][0]].detach().reshape(-1).to(device) for i in bucket])
        group.broadcast(flat, root=0).wait()


class BroadcastSync:
    """Rank 0 broadcasts the whole model to a process group with every engine; all workers then wait at a
    barrier. The group is formed at the first publish and kept for the workers' lifetime."""

    def __init__(self, ctx: WorkerContext) -> None:
        self.engines = ctx.extra["engines"]
        self.backend = group_backend(ctx.cfg)
        self.device = ctx.device if self.backend == "nccl" else torch.device("cpu")
        self.address: GroupAddress | None = None
        self.group: Any = None
        self._server: Any = None

    def publish(self, core: StepCore, version: int, first: bool = False) -> float:
        import torch.distributed as dist

        start = time.perf_counter()
        weights = core.strategy.full_state_dict(core.model)
        if weights is not None:  # a new BroadcastSync forms a new group: every engine loads, whatever it held
            self._broadcast(policy_weights(core.strategy.unwrap(core.model), weights), version)
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.barrier()
        return time.perf_counter() - start

    def _broadcast(self, weights: dict[str, torch.Tensor], version: int) -> None:
        import ray

        meta = [(name, str(t.dtype).removeprefix("torch."), tuple(t.shape)) for name, t in weights.items()]
        if self.address is None:
            self._server, self.address = self._open_group()
        # Ray must not run a lost receive again on a restarted engine: the group it belonged to is gone.
        joining = self.group is None
        calls = [
            engine.receive.options(max_task_retries=0).remote(version, self.address, rank, meta, joining)
            for rank, engine in enumerate(self.engines, start=1)
        ]
        if joining:
            self.group = join_group(self.address, 0, self._server)
        send_weights(self.group, weights, meta, self.device)
        ray.get(calls)

    def _open_group(self) -> tuple[Any, GroupAddress]:
        import ray
        import torch.distributed as dist

        host = ray.util.get_node_ip_address()
        server = dist.TCPStore(  # type: ignore[attr-defined]
            host, 0, is_master=True, wait_for_workers=False, timeout=GROUP_TIMEOUT
        )
        return server, GroupAddress(host, server.port, len(self.engines) + 1, self.backend)


SYNCS: dict[str, Callable[[WorkerContext], WeightSync]] = {"store": StoreSync, "broadcast": BroadcastSync}
"""``weight_sync(cfg)`` -> the training workers' side of it."""
