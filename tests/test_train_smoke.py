"""DPO smoke test on a tiny random Llama: LoRA weights change, base weights do not, the run dir is complete."""

from __future__ import annotations

import json

import torch
from safetensors.torch import load_file

from tests.conftest import compose


def test_dpo_lora_trains_adapter_and_leaves_base_untouched(tiny_model_dir, tiny_prefs, tmp_path, monkeypatch):
    import trl

    from safetune.train.recipe import run_train

    captured = {}

    class RecordingDPOTrainer(trl.DPOTrainer):
        def train(self, *a, **kw):
            model = self.model
            captured["before"] = {n: p.detach().clone() for n, p in model.named_parameters()}
            out = super().train(*a, **kw)
            captured["after"] = {n: p.detach().clone() for n, p in model.named_parameters()}
            captured["trainable"] = {n for n, p in model.named_parameters() if p.requires_grad}
            return out

    monkeypatch.setattr(trl, "DPOTrainer", RecordingDPOTrainer)
    run_dir = tmp_path / "run"
    cfg = compose(
        "train",
        [
            f"model.name_or_path={tiny_model_dir}",
            f"data.sources=[{{name: tiny, _target_: safetune.data.sources.triplets.load, path: {tiny_prefs}}}]",
            "trainer.max_steps=3",
            "trainer.learning_rate=1e-2",
            "trainer.per_device_train_batch_size=4",
            "trainer.report_to=[]",
            f"run_dir={run_dir}",
            f"paths.cache={tmp_path / 'cache'}",
        ],
    )
    metrics, artifacts = run_train(cfg)

    before, after, trainable = captured["before"], captured["after"], captured["trainable"]
    lora = [n for n in trainable if "lora_" in n]
    assert lora and trainable == set(lora), "only LoRA parameters may be trainable"
    assert any(not torch.equal(before[n], after[n]) for n in lora if "lora_B" in n), "LoRA B weights did not move"
    base = [n for n in before if n not in trainable]
    assert base and all(torch.equal(before[n], after[n]) for n in base), "a base weight changed"

    # Run directory: adapter (safetensors only), resolved config, manifest, log history, metrics.
    assert artifacts["run_dir"] == str(run_dir)
    saved = load_file(run_dir / "adapter" / "adapter_model.safetensors")
    assert saved and all("lora_" in k for k in saved)
    assert any(v.abs().sum() > 0 for k, v in saved.items() if "lora_B" in k)
    assert not list(run_dir.rglob("*.bin")) and not list(run_dir.rglob("*.pt")), "no pickle files in a run dir"
    manifest = json.loads((run_dir / "data_manifest.json").read_text())
    assert manifest["train_rows"] == 8 and manifest["sources"][0]["name"] == "tiny"
    assert len(manifest["content_hash"]) == 64
    history = json.loads((run_dir / "log_history.json").read_text())
    assert sum("loss" in h for h in history) == 3
    assert "max_steps: 3" in (run_dir / "config.yaml").read_text()
    assert json.loads((run_dir / "metrics.json").read_text())["train_runtime"] > 0
    train_rows = [json.loads(line) for line in (run_dir / "data" / "train.jsonl").read_text().splitlines()]
    assert {r["categories"][0] for r in train_rows} >= {"Cybercrime", "Animal Abuse"}  # categories survive TRL


def test_saved_config_redacts_secrets(tiny_model_dir, tiny_prefs, tmp_path):
    from safetune.core.runs import redact

    cfg = {"model": {"name_or_path": "x", "hub_token": "hf_abc"}, "report": {"wandb_api_key": "k"}, "ok": {"beta": 0.1}}
    out = redact(cfg)
    assert out["model"]["hub_token"] == "***" and out["report"]["wandb_api_key"] == "***"
    assert out["ok"]["beta"] == 0.1 and out["model"]["name_or_path"] == "x"
