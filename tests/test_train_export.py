"""safetune-export: the merged model generates exactly what base + adapter generates."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from train_tiny import compose_train, make_tiny_model, train_overrides, write_tiny_data

from safetune.core.modeling import ModelSpec, load_model, load_tokenizer
from safetune.train.export import ExportError, export_run, push_to_hub
from safetune.train.recipe import run_train


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    d = tmp_path_factory.mktemp("export")
    model_dir = make_tiny_model(d / "model")
    data = write_tiny_data(d / "data.jsonl")
    cfg = compose_train(
        train_overrides(
            model_dir,
            data,
            d / "run",
            "trainer.max_steps=4",
            "trainer.warmup_steps=0",
            "trainer.learning_rate=2e-2",
            f"ref_cache.dir={d / 'rc'}",
        )
    )
    run_train(cfg)
    return model_dir, d / "run"


def test_merged_model_matches_base_plus_adapter(trained, tmp_path):
    from peft import PeftModel

    model_dir, run_dir = trained
    out = export_run(run_dir, tmp_path / "merged")
    assert (out / "model.safetensors").is_file() and not list(out.glob("*.bin"))
    assert (out / "tokenizer.json").is_file() and (out / "chat_template.jinja").is_file()

    spec = ModelSpec(name_or_path=str(model_dir), dtype="float32")
    base_plus = PeftModel.from_pretrained(load_model(spec), str(run_dir / "adapter")).eval()
    merged = load_model(ModelSpec(name_or_path=str(out), dtype="float32")).eval()
    # The adapter is not a no-op: merged weights differ from the base.
    base_w, merged_w = load_file(str(model_dir / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert any(not torch.allclose(base_w[k], merged_w[k]) for k in base_w if "proj" in k)

    tok = load_tokenizer(spec, str(out))
    tok.padding_side = "left"
    prompts = [
        tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
        for p in ("How do I pick a lock?", "What is the capital of France?")
    ]
    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    kw = {"max_new_tokens": 12, "do_sample": False, "pad_token_id": tok.pad_token_id}
    with torch.no_grad():
        a = base_plus.generate(**enc, **kw)
        b = merged.generate(**enc, **kw)
        la = base_plus(**enc).logits
        lb = merged(**enc).logits
    assert torch.equal(a, b)
    torch.testing.assert_close(la, lb, rtol=1e-4, atol=1e-4)


def test_model_card_records_config_manifest_and_latest_eval(trained, tmp_path):
    _, run_dir = trained
    ev = run_dir / "eval"
    ev.mkdir(exist_ok=True)
    summary = {
        "suites": {},
        "overall": {
            "harmful": {
                "per_category": {
                    "Endangering National Security": {
                        "rate": 0.75,
                        "k": 3,
                        "n": 4,
                        "ci": [0.3, 0.95],
                        "partial_rate": 0.0,
                    }
                },
                "micro": {"rate": 0.75, "k": 3, "n": 4, "ci": [0.3, 0.95]},
                "macro": 0.75,
                "partial_rate": 0.0,
            }
        },
    }
    (ev / "results.json").write_text(json.dumps({"meta": {"judge": "keyword"}, "summary": summary}))
    out = export_run(run_dir, tmp_path / "merged")
    card = (out / "README.md").read_text()
    manifest = json.loads((run_dir / "data_manifest.json").read_text())
    assert manifest["content_hash"] in card
    assert "learning_rate: 0.02" in card  # the training config
    assert "Endangering National Security" in card and "75" in card  # the evaluation table


def test_push_needs_repo_and_token(tmp_path):
    with pytest.raises(ExportError, match="hub_repo_id"):
        push_to_hub(tmp_path, "", "tok")
    with pytest.raises(ExportError, match="token"):
        push_to_hub(tmp_path, "org/name", None)


def test_export_rejects_a_directory_that_is_not_a_run(tmp_path):
    with pytest.raises(ExportError, match="safetune_run.json"):
        export_run(tmp_path)
