"""Less padding, same numbers: the length-sorted reference pass, completion-only LM-head scoring on CPU and
``train_sampling_strategy=group_by_length`` (a ``length`` column the sampler reads)."""

from __future__ import annotations

import pytest
import torch
from train_tiny import make_tiny_model

from safetune.train.dpo_config import build_dpo_config, safetune_trainer_options
from safetune.train.trl_ext import completion_positions_only, make_trainer_class, pair_lengths

ROWS = [
    ("Hi?", "Hello.", "No."),
    ("Explain in detail how a bicycle gear system works for a beginner rider?", "Gears trade force for speed.", "No."),
    ("Name a colour.", "Blue, like a clear summer sky over the sea on a calm afternoon.", "I can't."),
    ("What is 2 + 2?", "4.", "I won't help with arithmetic because numbers could be misused by someone."),
    ("Write one word.", "Word.", "Sorry."),
    ("Describe the water cycle with evaporation, condensation and rain in a paragraph.", "Water evaporates.", "No."),
]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("tiny_pad") / "model")


def _dataset(n: int):
    from datasets import Dataset

    rows = [ROWS[i % len(ROWS)] for i in range(n)]
    return Dataset.from_list(
        [
            {
                "prompt": [{"role": "user", "content": p + " " * (i // len(ROWS))}],
                "chosen": [{"role": "assistant", "content": c}],
                "rejected": [{"role": "assistant", "content": r}],
            }
            for i, (p, c, r) in enumerate(rows)
        ]
    )


def _trainer(model_dir, tmp_path, n: int, *, safetune: bool = True, peft_config=None, ref_cache=None, **trainer_cfg):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOTrainer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    cfg = {
        "per_device_train_batch_size": 2,
        "precompute_ref_log_probs": True,
        "precompute_ref_batch_size": 4,
        "max_length": 128,
        "report_to": [],
        "bf16": False,
        "max_steps": 1,
        **trainer_cfg,
    }
    args = build_dpo_config(cfg, str(tmp_path / ("safetune" if safetune else "trl")))
    if not safetune:
        return DPOTrainer(model=model, args=args, train_dataset=_dataset(n), processing_class=tok)
    own = safetune_trainer_options(cfg)  # e.g. pack_sequences (tests/test_train_packing.py)
    return make_trainer_class()(
        model=model,
        args=args,
        train_dataset=_dataset(n),
        processing_class=tok,
        peft_config=peft_config,
        ref_cache=ref_cache,
        **own,
    )


def test_length_sorted_reference_pass_returns_trls_log_probs_in_dataset_order(tiny_model, tmp_path):
    plain = _trainer(tiny_model, tmp_path, 12, safetune=False)
    ours = _trainer(tiny_model, tmp_path, 12)
    lengths = pair_lengths(ours.train_dataset, 128)
    assert sorted(lengths, reverse=True) != lengths  # the sort really reorders these rows
    for col in ("ref_chosen_logps", "ref_rejected_logps"):
        expected = torch.tensor(plain.train_dataset[col])
        got = torch.tensor(ours.train_dataset[col])
        assert torch.allclose(got, expected, atol=1e-4), (col, got, expected)
    assert ours.train_dataset["prompt_ids"] == plain.train_dataset["prompt_ids"]  # rows stay in their order


def test_completion_only_scoring_gives_identical_log_probs_and_gradients(tiny_model):
    from transformers import AutoModelForCausalLM
    from trl.trainer import utils as trl_utils

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    trl_utils.add_fused_lm_head(model)
    torch.manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (3, 20))
    labels = ids.clone()
    labels[:, :12] = -100  # prompt positions
    labels[0, 17:] = -100  # padding

    def run():
        model.zero_grad()
        out = model(input_ids=ids, labels=labels, fused_lm_head=True).log_probs
        out.sum().backward()
        return out.detach(), model.model.layers[0].mlp.up_proj.weight.grad.clone()

    assert not trl_utils._use_triton(torch.device("cpu"))  # TRL scores every position on CPU
    full_logps, full_grad = run()
    with completion_positions_only() as applied:
        assert applied, "TRL's fused-LM-head internals moved: update safetune.train.trl_ext.completion_positions_only"
        assert trl_utils._use_triton(torch.device("cpu"))
        compact_logps, compact_grad = run()
    assert not trl_utils._use_triton(torch.device("cpu"))  # restored
    assert (full_logps[labels[:, 1:] == -100] == 0).all()
    assert torch.allclose(compact_logps, full_logps, atol=1e-6)
    assert torch.allclose(compact_grad, full_grad, atol=1e-6)


def test_cpu_logprob_tiles_give_the_same_log_probs_entropy_and_gradients(tiny_model, monkeypatch):
    """Cache-sized LM-head tiles on CPU: several token and vocabulary tiles (sizes lowered to the tiny model's) give
    TRL's single-tile numbers; TRL's sizes come back after the block, and other devices are left alone."""
    from transformers import AutoModelForCausalLM
    from trl.kernels import chunked_logprob as trl_kernel
    from trl.trainer import utils as trl_utils

    from safetune.train import trl_ext

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    trl_utils.add_fused_lm_head(model, outputs=("log_probs", "entropy", "mean_logits", "is_top1"))
    torch.manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (3, 20))
    labels = ids.clone()
    labels[:, :5] = -100

    def run():
        model.zero_grad()
        with completion_positions_only():
            out = model(input_ids=ids, labels=labels, fused_lm_head=True)
        (out.log_probs.sum() + out.entropy.sum()).backward()
        return out.log_probs.detach(), out.entropy.detach(), model.lm_head.weight.grad.clone()

    sizes = (trl_kernel.TOKEN_CHUNK_SIZE, trl_utils._CHUNKED_LOGPROB_CHUNK_SIZE)
    whole = run()
    assert sizes[0] > ids.numel()  # TRL: one token tile for this batch
    monkeypatch.setattr(trl_ext, "CPU_LOGPROB_TOKENS", 7)  # 45 scored positions: 7 token tiles
    monkeypatch.setattr(trl_ext, "CPU_LOGPROB_VOCAB", 5000)  # 10 vocabulary tiles, the last a short one
    with trl_ext.cpu_logprob_tiles(torch.device("cpu")) as applied:
        assert applied and (trl_kernel.TOKEN_CHUNK_SIZE, trl_utils._CHUNKED_LOGPROB_CHUNK_SIZE) != sizes
        tiled = run()
    assert (trl_kernel.TOKEN_CHUNK_SIZE, trl_utils._CHUNKED_LOGPROB_CHUNK_SIZE) == sizes  # restored
    for a, b in zip(whole, tiled, strict=True):
        assert torch.allclose(a, b, atol=1e-5), (a - b).abs().max()
    with trl_ext.cpu_logprob_tiles(torch.device("meta")) as applied:  # not CPU: TRL's own tiles
        assert not applied and (trl_kernel.TOKEN_CHUNK_SIZE, trl_utils._CHUNKED_LOGPROB_CHUNK_SIZE) == sizes


def _padded_tokens(trainer) -> int:
    total = 0
    for batch in trainer.get_train_dataloader():
        total += batch["input_ids"].numel()
    return total


def test_group_by_length_batches_similar_lengths(tiny_model, tmp_path):
    torch.manual_seed(0)
    grouped = _trainer(tiny_model, tmp_path, 64, train_sampling_strategy="group_by_length")
    ds = grouped.train_dataset
    assert ds["length"] == [
        min(128, len(p) + max(len(c), len(r)))
        for p, c, r in zip(ds["prompt_ids"], ds["chosen_ids"], ds["rejected_ids"])
    ]
    torch.manual_seed(0)
    shuffled = _trainer(tiny_model, tmp_path, 64)
    n_seqs = sum(len(b["input_ids"]) for b in grouped.get_train_dataloader())
    assert n_seqs == 2 * 64  # every row once (chosen + rejected sequences)
    real = 2 * sum(ds["length"])  # chosen + rejected, unpadded
    waste_grouped, waste_shuffled = _padded_tokens(grouped) - real, _padded_tokens(shuffled) - real
    assert 0 <= waste_grouped < 0.25 * waste_shuffled, (waste_grouped, waste_shuffled)
