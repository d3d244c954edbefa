"""One home for each shared rule: the precision decision and the TRL extension gate."""

from __future__ import annotations

import pytest
import torch

from safetune.core import precision
from safetune.train import trl_ext


def test_precision_auto_is_bf16_only_where_native_and_for_fp32_weights(monkeypatch):
    monkeypatch.setattr(precision, "cpu_bf16_supported", lambda: True)
    assert precision.decide("auto", device_type="cpu", weight_dtype=torch.float32).label == "bf16"
    assert precision.decide("auto", device_type="cpu", weight_dtype=torch.bfloat16).label == "model"
    assert precision.decide("model", device_type="cpu", weight_dtype=torch.float32).autocast is None
    assert precision.training_flags(None, None)["bf16"] is True or torch.cuda.is_available()
    monkeypatch.setattr(precision, "cpu_bf16_supported", lambda: False)
    assert precision.decide("auto", device_type="cpu", weight_dtype=torch.float32).label == "model"
    assert precision.decide("bf16", device_type="cpu", weight_dtype=torch.float32).label == "bf16"  # explicit
    if not torch.cuda.is_available():
        assert precision.training_flags(None, None) == {"bf16": False, "fp16": False}
        with pytest.raises(precision.PrecisionError, match="trainer.bf16=true.*no native bfloat16"):
            precision.training_flags(True, None)
    with pytest.raises(precision.PrecisionError, match="expected one of auto"):
        precision.decide("half", device_type="cpu", weight_dtype=torch.float32)


def test_training_and_generation_read_the_same_decision(monkeypatch):
    from safetune.eval.generate import resolve_precision
    from safetune.train.dpo_config import build_dpo_config

    monkeypatch.setattr(precision, "cpu_bf16_supported", lambda: False)
    assert build_dpo_config({}, "/tmp/unused").bf16 is torch.cuda.is_available()
    lin = torch.nn.Linear(2, 2)
    assert resolve_precision("auto", lin) == "model"
    monkeypatch.setattr(precision, "cpu_bf16_supported", lambda: True)
    assert build_dpo_config({}, "/tmp/unused").bf16 is True
    assert resolve_precision("auto", lin) == "bf16"


def test_trl_gate_passes_on_the_installed_trl():
    assert trl_ext.check_trl().startswith(trl_ext.TESTED_TRL)


def test_trl_gate_names_a_missing_or_changed_hook(monkeypatch):
    from trl import DPOTrainer

    monkeypatch.delattr(DPOTrainer, "_precompute_ref_logps")
    with pytest.raises(trl_ext.TRLCompatibilityError, match=r"_precompute_ref_logps is missing.*trl>=1\.16,<1\.17"):
        trl_ext.check_trl()
    monkeypatch.undo()
    monkeypatch.setattr(DPOTrainer, "_compute_loss", lambda self, model, batch: None)
    with pytest.raises(trl_ext.TRLCompatibilityError, match=r"_compute_loss takes \['model', 'batch'\]"):
        trl_ext.check_trl()
    monkeypatch.undo()
    import trl.trainer.utils as u

    monkeypatch.delattr(u, "_use_triton")
    with pytest.raises(trl_ext.TRLCompatibilityError, match="_use_triton is missing"):
        trl_ext.check_trl()
    monkeypatch.undo()
    import trl.trainer.dpo_trainer as d

    for name in ("hash_module", "disable_gradient_checkpointing"):
        monkeypatch.delattr(d, name)
        with pytest.raises(trl_ext.TRLCompatibilityError, match=f"dpo_trainer.{name} is missing"):
            trl_ext.check_trl()
        monkeypatch.undo()
