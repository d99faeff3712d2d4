"""model.liger_kernel: Liger's Triton kernels replace RMSNorm, RoPE and SwiGLU on CUDA workers, the loss stays
ours and training matches the unpatched model; on CPU the key is refused when the config loads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from raytune_ft.config import ConfigError, load_config
from raytune_ft.train import build_training


def test_liger_is_refused_on_cpu_and_llamafactorys_key_maps(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="run on CUDA only"):
        load_config(None, ["model.liger_kernel=true"])
    path = tmp_path / "lf.yaml"
    path.write_text("model_name_or_path: x\nenable_liger_kernel: true\n")
    assert load_config(path, ["scaling.use_gpu=true"]).model.liger_kernel is True


@pytest.mark.gpu
def test_liger_kernels_patch_the_model_and_train_like_it(tiny_model_dir: Path, identity_batch: Any) -> None:
    pytest.importorskip("liger_kernel")
    device = torch.device("cuda", torch.cuda.current_device())
    batch = {k: v.to(device) for k, v in identity_batch(4).items()}
    curves = {}
    for liger in (False, True):
        overrides = [f"model.source={tiny_model_dir}", f"model.liger_kernel={liger}", "scaling.use_gpu=true",
                     "adapter.rank=16", "train.learning_rate=1e-2", "train.lr_scheduler=constant"]  # fmt: skip
        cfg = load_config(None, overrides)
        torch.manual_seed(0)
        core, _ = build_training(cfg, 8, device)
        names = {type(module).__name__ for module in core.model.modules()}
        assert any(name.startswith("Liger") for name in names) == liger, names
        curves[liger] = [s.loss_sum / s.terms for s in (core.step([batch]) for _ in range(6))]
    assert curves[True][-1] < curves[True][0] - 0.5, curves
    assert all(abs(a - b) < 0.05 for a, b in zip(curves[False], curves[True], strict=True)), curves
