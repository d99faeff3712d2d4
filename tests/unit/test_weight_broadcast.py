"""rollout.weight_sync broadcast without Ray: a trainer process and an engine process form the group as the run
does (a TCPStore on the trainer; gloo on CPU, NCCL between two GPUs), and the weights arrive whole, bucketed by
dtype and size."""

from __future__ import annotations

import multiprocessing
from typing import Any

import pytest
import torch

from raytune_ft.rl.sync import GroupAddress, buckets, join_group, receive_weights, send_weights


def weights() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {
        "model.embed_tokens.weight": torch.randn(64, 16, generator=generator),
        "model.layers.0.self_attn.q_proj.weight": torch.randn(16, 16, generator=generator),
        "model.layers.0.input_layernorm.weight": torch.randn(16, generator=generator).bfloat16(),
        "model.norm.weight": torch.randn(16, generator=generator).bfloat16(),
        "lm_head.weight": torch.randn(64, 16, generator=generator),
    }


def meta() -> list[tuple[str, str, tuple[int, ...]]]:
    return [(name, str(t.dtype).removeprefix("torch."), tuple(t.shape)) for name, t in weights().items()]


def test_buckets_hold_consecutive_weights_of_one_dtype_up_to_the_limit() -> None:
    # 4 KiB and 1 KiB of float32, two bfloat16 vectors, 4 KiB of float32: a 4 KiB limit splits the first run
    assert buckets(meta(), limit=4 * 1024) == [[0], [1], [2, 3], [4]]
    assert buckets(meta(), limit=2**20) == [[0, 1], [2, 3], [4]]


def _engine(address: GroupAddress, device: str, out: Any) -> None:
    if device == "cuda":
        torch.cuda.set_device(1)  # NCCL needs a GPU per member; a real engine sees only its own
    group = join_group(address, 1)
    out.put({name: tensor.cpu().clone() for name, tensor in receive_weights(group, meta(), device)})


TWO_GPUS = pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() < 2, reason="needs 2 GPUs")


@pytest.mark.parametrize(
    ("backend", "device"),
    [("gloo", "cpu"), pytest.param("nccl", "cuda", marks=[pytest.mark.gpu, TWO_GPUS])],
)
def test_an_engine_receives_every_weight_as_the_trainer_holds_it(backend: str, device: str) -> None:
    import torch.distributed as dist

    server = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)  # type: ignore[attr-defined]
    address = GroupAddress("127.0.0.1", server.port, 2, backend)
    spawn = multiprocessing.get_context("spawn")
    out = spawn.Queue()
    engine = spawn.Process(target=_engine, args=(address, device, out))
    engine.start()
    try:
        group = join_group(address, 0, server)
        sent = weights()
        send_weights(group, sent, meta(), torch.device(device, 0) if device == "cuda" else torch.device(device))
        received = out.get(timeout=120)
    finally:
        engine.join(timeout=60)
        if engine.is_alive():
            engine.terminate()
    assert list(received) == list(sent)
    for name, tensor in sent.items():
        assert received[name].dtype == tensor.dtype and torch.equal(received[name], tensor), name


def test_ppo_broadcasts_its_policy_by_the_base_models_names(tiny_model_dir: Any) -> None:
    """PPO's model holds the LM under ``lm.`` beside its value head; the engines load the LM's weights only, by the
    names the base model's checkpoint uses."""
    from transformers import AutoModelForCausalLM

    from raytune_ft.models import attach_head
    from raytune_ft.rl.sync import policy_weights

    lm = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    names = set(lm.state_dict())
    policy = attach_head(lm, "ppo")
    sent = policy_weights(policy, policy.state_dict())
    assert set(sent) == names and all(torch.equal(sent[n], lm.state_dict()[n]) for n in names)
    plain = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert policy_weights(plain, plain.state_dict()).keys() == names
