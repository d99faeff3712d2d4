"""adapter.pissa_init: PiSSA trains, its checkpoint is a plain LoRA that gives the trained model's outputs
on the original base, and resuming from it restores the exact trained state."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from raytune_ft.config import ConfigError, load_config
from raytune_ft.models import load_for_inference
from raytune_ft.models.pissa import as_plain_lora, split_plain_lora
from raytune_ft.train import TrainState, build_training, save_checkpoint

CPU = torch.device("cpu")
Batch = Callable[..., dict[str, torch.Tensor]]


def logits(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def test_plain_lora_form_round_trips() -> None:
    a, b, a0, b0 = torch.randn(4, 16), torch.randn(32, 4), torch.randn(4, 16), torch.randn(32, 4)
    state = {"m.lora_A.default.weight": a, "m.lora_B.default.weight": b, "m.base.weight": torch.ones(2)}
    plain = as_plain_lora(state, {"m.lora_A.default.weight": a0, "m.lora_B.default.weight": b0})
    big_a, big_b = plain["m.lora_A.default.weight"], plain["m.lora_B.default.weight"]
    torch.testing.assert_close(big_b @ big_a, b @ a - b0 @ a0)  # W + s B'A' = W_res + s B A
    (ra, rb), (ra0, rb0) = split_plain_lora(big_a, big_b)
    for got, want in ((ra, a), (rb, b), (ra0, a0), (rb0, b0)):
        assert torch.equal(got, want)
    assert torch.equal(plain["m.base.weight"], state["m.base.weight"])


@pytest.mark.parametrize("rslora", [False, True])
def test_checkpoint_loads_on_the_original_base_and_resumes_exactly(
    tiny_model_dir: Path, identity_batch: Batch, tmp_path: Path, rslora: bool
) -> None:
    cfg = load_config(None, [f"model.source={tiny_model_dir}", "adapter.pissa_init=true", "adapter.rank=8",
                             f"adapter.use_rslora={rslora}", "train.learning_rate=1e-2", "train.seed=0"])  # fmt: skip
    torch.manual_seed(0)
    core, tokenizer = build_training(cfg, 6, CPU)
    batch = identity_batch(4)
    losses = [core.step([identity_batch(4, offset=4 * i)]).loss_sum for i in range(6)]
    assert losses[-1] < losses[0]
    trained = logits(core.model, batch)
    save_checkpoint(tmp_path, core, tokenizer, cfg, TrainState(global_step=6))

    config = (tmp_path / "adapter_config.json").read_text()
    assert '"r": 16' in config, "stored as a plain LoRA of rank 2r"
    model, _ = load_for_inference(str(tiny_model_dir), tmp_path)  # plain peft on the untouched base
    torch.testing.assert_close(logits(model, batch), trained, rtol=1e-4, atol=1e-4)

    torch.manual_seed(123)  # a different fresh PiSSA init: resume must not depend on it
    resumed, _ = build_training(cfg, 6, CPU, checkpoint=tmp_path)
    torch.testing.assert_close(logits(resumed.model, batch), trained, rtol=1e-4, atol=1e-4)
    again = tmp_path / "again"
    save_checkpoint(again, resumed, tokenizer, cfg, TrainState(global_step=6))
    model, _ = load_for_inference(str(tiny_model_dir), again)
    torch.testing.assert_close(logits(model, batch), trained, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["adapter.use_dora=true"], "without use_dora"),
        (["scaling.strategy=fsdp2"], "runs with scaling.strategy ddp"),
    ],
)
def test_pissa_combinations_refused(extra: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, ["adapter.pissa_init=true", *extra])
