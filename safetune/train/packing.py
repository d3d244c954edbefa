"""Packed DPO forward passes: several sequences per row, each attending only to itself (``trainer.pack_sequences``).

TRL 1.16 pads every chosen and rejected sequence of a batch to the longest one (its own ``padding_free`` is
disabled for DPO). Chosen and rejected answers differ in length (a short refusal next to a long compliance), so a
large share of each padded batch is padding the model still runs through every layer. :class:`PackedForward`
stands in for the model inside TRL's loss and reference pass: it lays the real tokens of the ``(2B, L)`` padded
batch end to end into rows (first-fit decreasing; :func:`best_plan` picks the row width between ``L`` and
``trainer.max_length`` by a cost model, or keeps the padded batch when packing would not be cheaper), restarts
``position_ids`` at every sequence start and passes no ``attention_mask``; transformers then detects the packed
layout from the positions and builds a block-diagonal causal mask, so no sequence attends to another (tested by
changing one sequence and checking its row-mates' log-probs do not move). The per-token outputs (log-probs, entropy, mean
logits, top-1 flags) are scattered back to the padded ``(2B, L-1)`` layout, so every TRL loss type, length
weighting and metric downstream runs unchanged, and the log-probs equal the padded pass's within float tolerance.
With ``trainer.share_prompt`` a pair's prompt is laid down once, its chosen and rejected answers after it, kept apart
by a 4-D mask (:func:`pack_trees`), when that is cheaper still.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import torch

from safetune.core.config import ConfigError

# per-token fields of TRL's FusedCausalLMOutput, (rows, width - 1) each
PER_TOKEN_FIELDS = ("log_probs", "entropy", "log_sum_sq_probs", "mean_logits", "is_top1")


@dataclass
class PackPlan:
    """Where each sequence of a right-padded batch goes in the packed rows."""

    lengths: list[int]  # real tokens of each sequence
    row: list[int]  # packed row of each sequence
    offset: list[int]  # first column of each sequence in its row
    rows: int
    width: int  # packed row width (the longest filled row)

    @property
    def padded_tokens_saved(self) -> int:
        return 0 if not self.lengths else len(self.lengths) * max(self.lengths) - self.rows * self.width


def plan_packing(lengths: list[int], capacity: int) -> PackPlan:
    """First-fit decreasing: longest sequences first, each into the first row with room (rows hold ``capacity``)."""
    if any(n > capacity for n in lengths):
        raise ValueError(f"a sequence of {max(lengths)} tokens does not fit rows of {capacity}")
    fill: list[int] = []
    row, offset = [0] * len(lengths), [0] * len(lengths)
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        n = lengths[i]
        r = next((k for k, used in enumerate(fill) if used + n <= capacity), None)
        if r is None:
            fill.append(0)
            r = len(fill) - 1
        row[i], offset[i] = r, fill[r]
        fill[r] += n
    return PackPlan(lengths=list(lengths), row=row, offset=offset, rows=len(fill), width=max(fill, default=0))


def _index_maps(plan: PackPlan, padded_width: int, device: Any) -> tuple[torch.Tensor, ...]:
    """Flat indices: padded token -> packed token, and padded next-token output -> packed output."""
    tok_src, tok_dst, out_src, out_dst = [], [], [], []
    for i, (n, r, o) in enumerate(zip(plan.lengths, plan.row, plan.offset, strict=True)):
        tok_src.extend(range(i * padded_width, i * padded_width + n))
        tok_dst.extend(range(r * plan.width + o, r * plan.width + o + n))
        # output position j predicts token j + 1; a sequence of n tokens has n - 1 such positions
        out_src.extend(range(r * (plan.width - 1) + o, r * (plan.width - 1) + o + n - 1))
        out_dst.extend(range(i * (padded_width - 1), i * (padded_width - 1) + n - 1))

    def t(x: list[int]) -> torch.Tensor:
        return torch.tensor(x, dtype=torch.long, device=device)

    return t(tok_src), t(tok_dst), t(out_src), t(out_dst)


def packing_cost(rows: int, width: int, attention_width: float) -> float:
    """Relative forward cost of ``rows`` x ``width`` token slots: linear layers per slot, attention per slot x width.

    ``attention_width`` is the row width at which attention work per token equals the linear layers' (about
    3 x hidden size for Llama-style blocks: 2 x 12 d^2 FLOPs of projections and MLP per token vs 4 d per key).
    """
    return rows * width * (1.0 + width / attention_width)


def best_plan(lengths: list[int], padded_width: int, capacity: int | None, attention_width: float) -> PackPlan | None:
    """The cheapest packing over row capacities from the batch width up to ``capacity``; None when padding is cheaper.

    Rows of the batch width only pack sequences short enough to share; wider rows pack more but pay quadratic
    attention and more waste in the last row. Uniform lengths (e.g. responses cut to ``max_completion_length``)
    usually leave padding the cheaper choice, and the padded batch then runs unchanged.
    """
    top = max(padded_width, capacity or 0)
    caps = sorted({padded_width, min(top, padded_width * 3 // 2), min(top, padded_width * 2), top})
    plans = [plan_packing(lengths, c) for c in caps]
    best = min(plans, key=lambda p: packing_cost(p.rows, p.width, attention_width))
    padded = packing_cost(len(lengths), max(lengths), attention_width)  # TRL pads to the longest sequence
    if best.rows == len(lengths) or packing_cost(best.rows, best.width, attention_width) >= 0.97 * padded:
        return None
    return best


def pack_batch(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    labels: torch.Tensor | None,
    pad_token_id: int,
    capacity: int | None = None,
    plan: PackPlan | None = None,
) -> tuple[dict[str, torch.Tensor], PackPlan, tuple[torch.Tensor, ...]]:
    """Pack a right-padded batch into rows of ``max(capacity, batch width)`` tokens (or as ``plan`` says).

    Returns the model inputs (no attention mask), the plan and the index maps.
    """
    if attention_mask.dim() != 2:
        raise ValueError("packing needs a 2-D (batch, length) attention mask")
    lengths = attention_mask.sum(dim=1).tolist()
    width = input_ids.size(1)
    if plan is None:
        plan = plan_packing([int(n) for n in lengths], max(width, capacity or 0))
    maps = _index_maps(plan, width, input_ids.device)
    tok_src, tok_dst = maps[0], maps[1]
    size = plan.rows * plan.width
    ids = input_ids.new_full((size,), pad_token_id).index_copy(0, tok_dst, input_ids.reshape(-1)[tok_src])
    # positions restart at every sequence (and at the padding tail of a row, which becomes its own block)
    pos = torch.zeros(size, dtype=torch.long, device=input_ids.device)
    starts = torch.zeros(size, dtype=torch.bool, device=input_ids.device)
    for n, r, o in zip(plan.lengths, plan.row, plan.offset, strict=True):
        base = r * plan.width + o
        pos[base : base + n] = torch.arange(n, device=input_ids.device)
        starts[base] = True
    filled = torch.zeros(size, dtype=torch.bool, device=input_ids.device)
    filled[tok_dst] = True
    pos = pos.view(plan.rows, plan.width)
    for r in range(plan.rows):
        row_filled = filled.view(plan.rows, plan.width)[r]
        used = int(row_filled.sum())
        if used < plan.width:
            pos[r, used:] = torch.arange(plan.width - used, device=input_ids.device)
    out: dict[str, torch.Tensor] = {"input_ids": ids.view(plan.rows, plan.width), "position_ids": pos}
    if labels is not None:
        packed = labels.new_full((size,), -100).index_copy(0, tok_dst, labels.reshape(-1)[tok_src])
        # a sequence's first token is never predicted in the padded layout; never let its row-mate predict it
        packed[starts] = -100
        out["labels"] = packed.view(plan.rows, plan.width)
    return out, plan, maps


def unpack_per_token(
    x: torch.Tensor, plan: PackPlan, maps: tuple[torch.Tensor, ...], batch: int, padded_width: int
) -> torch.Tensor:
    """Packed ``(rows, width - 1)`` per-token outputs back to the padded ``(batch, padded_width - 1)`` layout."""
    out_src, out_dst = maps[2], maps[3]
    flat = x.reshape(-1)[out_src]
    out = x.new_zeros((batch * (padded_width - 1),))
    return out.index_put((out_dst,), flat).view(batch, padded_width - 1)


def _tree_mask_kind(model: Any) -> str | None:
    """The 4-D mask the model's attention takes: boolean (sdpa), additive (eager); None for kernels without one."""
    config = getattr(model, "config", None)
    impl = getattr(config, "_attn_implementation", None) or "sdpa"
    return {"sdpa": "bool", "eager": "additive"}.get(impl)


def check_row(input_ids, attention_mask, labels, plan: PackPlan, trees: TreePlan | None = None) -> tuple[Any, ...]:
    """One packed row's sequences as a batch of their own (cut to the longest), with a one-row plan laying them out
    as the batch did: the cheapest row holding two or more units (sequences; pairs with ``trees``), else the cheapest.
    It has every boundary the batch has (positions restarting, branches that must not meet) at a fraction of the cost."""
    units = trees.rows if trees is not None else plan
    members: dict[int, list[int]] = {}
    for i, r in enumerate(units.row):
        members.setdefault(r, []).append(i)

    def seqs_of(r: int) -> list[int]:
        return members[r] if trees is None else members[r] + [i + len(trees.shared) for i in members[r]]

    def cost(r: int) -> tuple[bool, int]:
        return len(members[r]) < 2, len(seqs_of(r)) * int(attention_mask[seqs_of(r)].sum(dim=1).max())

    r = min(members, key=cost)
    picked = members[r]
    sub: PackPlan | TreePlan = PackPlan(
        [units.lengths[i] for i in picked], [0] * len(picked), [units.offset[i] for i in picked], 1, units.width
    )
    if trees is not None:
        sub = TreePlan(*([getattr(trees, f)[i] for i in picked] for f in ("shared", "chosen", "rejected")), rows=sub)
    index = torch.tensor(seqs_of(r), dtype=torch.long, device=input_ids.device)
    width = int(attention_mask.index_select(0, index).sum(dim=1).max())
    return (*(t.index_select(0, index)[:, :width] for t in (input_ids, attention_mask, labels)), sub)


class PackingUnsupported(ConfigError):
    """The model's attention ignores packed ``position_ids``: sequences packed in one row would see each other."""


class PackedForward:
    """Calls ``model`` on the packed form of TRL's padded batch and returns per-token outputs in the padded layout.

    Passed to TRL's ``_compute_loss`` / ``compute_ref_log_probs`` in place of the model; only their
    ``model(input_ids=..., attention_mask=..., labels=..., fused_lm_head=True)`` call goes through it.
    With ``verify=True`` the sequences of one packed row of the first packed call (the cheapest row holding two or
    more sequences, or pairs when prompts are shared) are also run padded and packed on their own (no gradients;
    in fp32 unless training runs under autocast or with 16-bit weights) and the two must agree, so a model whose
    attention does not honour packed positions or the shared-prompt mask fails loudly instead of training on
    sequences that attend to each other. One row holds every kind of boundary the batch has, at a fraction of the
    cost of a padded pass over the whole batch (the reference pass's first batch is its largest).
    """

    def __init__(
        self,
        model: Any,
        pad_token_id: int,
        capacity: int | None = None,
        verify: bool = False,
        share_prompt: bool = False,
    ):
        self.model = model
        self.mask_kind = _tree_mask_kind(model)
        self.share_prompt = share_prompt and self.mask_kind is not None
        self.pad_token_id = pad_token_id
        self.capacity = capacity
        self.verify = verify
        self.last_plan: PackPlan | None = None
        self.verified_max_diff: float | None = None
        self.padded_calls = 0
        self.tree_calls = 0
        self.checked_sequences = 0  # how many sequences the first-batch check ran (one packed row's)
        config = getattr(model, "config", None)
        hidden = getattr(config.get_text_config() if hasattr(config, "get_text_config") else config, "hidden_size", 0)
        self.attention_width = 3.0 * (hidden or 1024)

    def __getattr__(self, name: str) -> Any:  # anything else TRL reads from the model
        return getattr(self.model, name)

    def __call__(self, *, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels=None, **kwargs: Any):
        if not kwargs.get("fused_lm_head") or labels is None:
            return self.model(input_ids=input_ids, attention_mask=attention_mask, labels=labels, **kwargs)
        batch, width = input_ids.shape
        lengths = [int(n) for n in attention_mask.sum(dim=1).tolist()]
        plan = best_plan(lengths, width, self.capacity, self.attention_width)
        trees = self._tree_plan(input_ids, attention_mask, labels, plan)
        self.last_plan = trees.rows if trees is not None else plan
        if trees is not None:
            packed, maps = pack_trees(input_ids, attention_mask, labels, self.pad_token_id, trees, self.mask_kind)
            plan = trees.rows
            self.tree_calls += 1
        elif plan is None:  # padding is as cheap: run the batch as TRL built it
            self.padded_calls += 1
            return self.model(input_ids=input_ids, attention_mask=attention_mask, labels=labels, **kwargs)
        else:
            packed, plan, maps = pack_batch(input_ids, attention_mask, labels, self.pad_token_id, plan=plan)
        if self.verify and plan.rows < batch:
            self._check(*check_row(input_ids, attention_mask, labels, plan, trees), kwargs)
        outputs = self.model(**packed, **kwargs)
        fields = {
            name: None
            if getattr(outputs, name, None) is None
            else unpack_per_token(getattr(outputs, name), plan, maps, batch, width)
            for name in PER_TOKEN_FIELDS
        }
        return SimpleNamespace(**fields, aux_loss=getattr(outputs, "aux_loss", None), loss=outputs.loss)

    def _tree_plan(self, input_ids, attention_mask, labels, flat: PackPlan | None) -> TreePlan | None:
        """Pairs laid out with their prompt once, when that is cheaper than the flat packing or the padded batch."""
        if not self.share_prompt or input_ids.size(0) % 2:
            return None
        trees = plan_trees(input_ids, attention_mask, labels, self.capacity)
        if not any(trees.shared):
            return None
        cost = packing_cost(trees.rows.rows, trees.rows.width, self.attention_width)
        rival = (
            packing_cost(input_ids.size(0), int(attention_mask.sum(dim=1).max()), self.attention_width)
            if flat is None
            else packing_cost(flat.rows, flat.width, self.attention_width)
        )
        return trees if cost < rival else None

    def _check(self, input_ids, attention_mask, labels, plan: PackPlan | TreePlan, kwargs) -> None:
        """Packed and padded log-probs of this (sub-)batch must agree (once); raises :class:`PackingUnsupported`."""
        batch, width = input_ids.shape
        device_type = input_ids.device.type
        # Under autocast (bf16 training) the inputs may already carry its rounding (the shared trunk's kept hidden
        # state), and held frozen weights are 16-bit: both passes then run as training runs them, to bf16 tolerance;
        # otherwise the comparison is exact fp32.
        low_precision = torch.is_autocast_enabled(device_type) or any(
            p.dtype in (torch.float16, torch.bfloat16) or not p.is_floating_point() for p in self.model.parameters()
        )
        exact = torch.autocast(device_type, enabled=False) if not low_precision else contextlib.nullcontext()
        if isinstance(plan, TreePlan):
            packed, maps = pack_trees(input_ids, attention_mask, labels, self.pad_token_id, plan, self.mask_kind)
            rows = plan.rows
        else:
            packed, rows, maps = pack_batch(input_ids, attention_mask, labels, self.pad_token_id, plan=plan)
        with torch.no_grad(), exact:
            ref = self.model(input_ids=input_ids, attention_mask=attention_mask, labels=labels, **kwargs).log_probs
            outputs = self.model(**packed, **kwargs)
            got = unpack_per_token(outputs.log_probs, rows, maps, batch, width)
        self.checked_sequences = batch
        scored = labels[:, 1:] != -100
        diff = (ref - got).abs()[scored]
        worst = float(diff.max()) if diff.numel() else 0.0
        mean = float(diff.mean()) if diff.numel() else 0.0
        tol = 0.05 if low_precision else 1e-3  # per-token nats; attending across sequences moves them by far more
        self.verify, self.verified_max_diff = False, worst
        if mean > tol:
            raise PackingUnsupported(
                f"trainer.pack_sequences=true: this model's log-probs change when sequences share a row (mean "
                f"{mean:.3g} nats/token, worst {worst:.3g}; expected <= {tol}), so its attention does not honour "
                "packed position_ids (or a shared-prompt mask) and sequences would attend to each other. Set "
                "trainer.share_prompt=false, or trainer.pack_sequences=false."
            )


# ---------------------------------------------------------------- shared prompts (trainer.share_prompt)


@dataclass
class TreePlan:
    """Each preference pair as one "tree": the prompt once, then the chosen and the rejected branch (see pack_trees)."""

    shared: list[int]  # tokens of the pair's prompt laid down once (prompt length - 1; 0 = nothing shared)
    chosen: list[int]  # real tokens of each chosen sequence
    rejected: list[int]  # real tokens of each rejected sequence
    rows: PackPlan  # trees packed into rows (first-fit decreasing)

    @property
    def lengths(self) -> list[int]:
        return [c + r - s for s, c, r in zip(self.shared, self.chosen, self.rejected, strict=True)]


def shared_prompt_lengths(input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor) -> list[int]:
    """Per pair of TRL's ``[chosen; rejected]`` batch: how many leading tokens both sequences can share.

    The prompt is the tokens before the first scored (label != -100) position; it is shared when both sequences
    have the same prompt length and tokens. Its last token stays in each branch, because its output predicts the
    branch's first answer token, which differs between the two. 0 when the pair does not share a prompt.
    """
    half = input_ids.size(0) // 2
    scored = labels != -100
    first = torch.where(scored.any(dim=1), scored.float().argmax(dim=1), attention_mask.sum(dim=1)).tolist()
    out = []
    for i in range(half):
        p, q = int(first[i]), int(first[i + half])
        same = p == q and p > 0 and bool(torch.equal(input_ids[i, :p], input_ids[i + half, :p]))
        out.append(p - 1 if same else 0)
    return out


def plan_trees(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor, capacity: int | None
) -> TreePlan:
    lengths = [int(n) for n in attention_mask.sum(dim=1).tolist()]
    half = len(lengths) // 2
    shared = shared_prompt_lengths(input_ids, attention_mask, labels)
    chosen, rejected = lengths[:half], lengths[half:]
    trees = [c + r - s for s, c, r in zip(shared, chosen, rejected, strict=True)]
    rows = plan_packing(trees, max(max(trees, default=0), capacity or 0))
    return TreePlan(shared=shared, chosen=chosen, rejected=rejected, rows=rows)


def pack_trees(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    labels: torch.Tensor,
    pad_token_id: int,
    plan: TreePlan,
    mask_kind: str = "bool",
) -> tuple[dict[str, torch.Tensor], tuple[torch.Tensor, ...]]:
    """Lay each pair out as ``prompt[:-1] | prompt[-1] + chosen | prompt[-1] + rejected`` with a 4-D attention mask.

    Both branches sit at the positions they have in their own sequence and attend to the shared prompt and to
    themselves only (never to each other, never to another pair), so every scored log-prob equals the padded
    pass's; the prompt is computed once instead of twice. Returns the model inputs and index maps in the layout of
    :func:`_index_maps` (padded token -> packed token, padded output -> packed output).
    """
    device = input_ids.device
    half, width = input_ids.size(0) // 2, input_ids.size(1)
    rows, cols = plan.rows.rows, plan.rows.width
    size = rows * cols
    tok_src: list[int] = []
    tok_dst: list[int] = []
    out_src: list[int] = []
    out_dst: list[int] = []
    pos = torch.zeros(size, dtype=torch.long)
    tree = -1 - torch.arange(size)  # padding columns: a group of their own (they attend to themselves only)
    branch = torch.zeros(size, dtype=torch.long)
    for i in range(half):
        s, nc, nr = plan.shared[i], plan.chosen[i], plan.rejected[i]
        r, off = plan.rows.row[i], plan.rows.offset[i]
        base = r * cols + off
        tree[base : base + nc + nr - s] = i
        # chosen sequence, tokens 0..nc-1 -> columns off..off+nc-1 (the first s of them are the shared prompt)
        tok_src.extend(range(i * width, i * width + nc))
        tok_dst.extend(range(base, base + nc))
        pos[base : base + nc] = torch.arange(nc)
        branch[base + s : base + nc] = 1
        # rejected sequence, tokens s..nr-1 -> columns off+nc.. (it reads the shared prompt of the chosen one)
        j = i + half
        tok_src.extend(range(j * width + s, j * width + nr))
        tok_dst.extend(range(base + nc, base + nc + nr - s))
        pos[base + nc : base + nc + nr - s] = torch.arange(s, nr)
        branch[base + nc : base + nc + nr - s] = 2
        # the output at token t predicts token t + 1; before s it only predicts prompt tokens (never scored)
        out_src.extend(r * (cols - 1) + off + t for t in range(s, nc - 1))
        out_dst.extend(i * (width - 1) + t for t in range(s, nc - 1))
        out_src.extend(r * (cols - 1) + off + nc + t - s for t in range(s, nr - 1))
        out_dst.extend(j * (width - 1) + t for t in range(s, nr - 1))

    def t(x: list[int]) -> torch.Tensor:
        return torch.tensor(x, dtype=torch.long, device=device)

    maps = (t(tok_src), t(tok_dst), t(out_src), t(out_dst))
    ids = input_ids.new_full((size,), pad_token_id).index_copy(0, maps[1], input_ids.reshape(-1)[maps[0]])
    packed_labels = labels.new_full((size,), -100).index_copy(0, maps[1], labels.reshape(-1)[maps[0]])
    for i in range(half):  # a sequence's first token is never predicted (matters when nothing is shared)
        base = plan.rows.row[i] * cols + plan.rows.offset[i]
        packed_labels[base] = -100
        packed_labels[base + plan.chosen[i]] = -100
    tree, branch, pos = tree.view(rows, cols), branch.view(rows, cols), pos.view(rows, cols)
    causal = torch.ones(cols, cols, dtype=torch.bool).tril()
    same_tree = tree.unsqueeze(2) == tree.unsqueeze(1)
    visible = (branch.unsqueeze(1) == 0) | (branch.unsqueeze(2) == branch.unsqueeze(1))  # key shared or same branch
    allowed = (same_tree & visible & causal).unsqueeze(1).to(device)  # (rows, 1, query, key)
    if mask_kind == "bool":
        mask = allowed
    else:  # additive (eager attention)
        mask = torch.zeros(allowed.shape, dtype=torch.float32, device=device).masked_fill(
            ~allowed, torch.finfo(torch.float32).min
        )
    inputs = {
        "input_ids": ids.view(rows, cols),
        "position_ids": pos.to(device),
        "attention_mask": mask,
        "labels": packed_labels.view(rows, cols),
    }
    return inputs, maps
