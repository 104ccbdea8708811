"""Prefix attention: packed pairs attended span by span, with no dense [T, T] mask (issue 15; opt-in for now).

The packed layout (``inspo.layout.PackedLayout``) places every node of a pair's prefix tree once in a row, e.g.
InSPO's ``[x | y_l, y_w | y_w, y_l]``, and isolates the branches with a dense 4D mask. Under sdpa that mask costs
O(T^2) memory per row and makes the kernel compute every tile, also the ones the mask empties (the other branch,
the upper triangle, other pairs), where causal rows skip them.

Here the same row is cut into *chains*: maximal runs of nodes in which each node is the parent of the next and
sits right after it. A token of a chain sees all of the chain head's ancestors and the chain up to itself, so a
chain is one attention call with queries = the chain and keys = [ancestor spans ; the chain], under a causal mask
aligned to the lower right (query i sees every ancestor key and chain keys 0..i). A chain without ancestors is
plain causal attention. InSPO is two calls per pair: causal over ``[x, y_l, y_w]`` and ``[y_w, y_l]`` against
``[x ; y_w, y_l]``; standard DPO is causal over ``[x, y_w]`` and ``[y_l]`` against ``[x ; y_l]``. Chains of equal
shape (across pairs and rows) are stacked into one call. Only the tiles a pair needs are computed, and nothing is
masked beyond causality, so flash kernels apply (torch's lower-right causal bias dispatches to flash on CUDA).

Use: ``register()`` adds the attention function to transformers (name :data:`PREFIX_ATTENTION`); set the model's
``config._attn_implementation`` to it and build rows with :class:`PrefixLayout`; ``inspo.logprobs`` passes the
rows' plan to the attention function through the model's keyword arguments.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention.bias import causal_lower_right

from inspo.errors import ConfigError
from inspo.layout import ModelRows, PackedLayout, RowBuilder, Span

PREFIX_ATTENTION = "inspo_prefix"
"""The name the attention function is registered under in transformers' ``AttentionInterface``."""


@dataclass(frozen=True)
class ChainGroup:
    """``count`` chains of one shape: ``q_len`` queries each, against ``k_len`` keys (the last ``q_len`` are the
    chain itself). Indices are flat positions in the [R * T] tokens of the batch, chain after chain."""

    query_index: Tensor
    key_index: Tensor
    count: int
    q_len: int
    k_len: int


@dataclass(frozen=True)
class PrefixPlan:
    """Which attention calls a batch of packed rows needs; computed once per batch, used by every layer."""

    groups: tuple[ChainGroup, ...]
    query_index: Tensor  # every group's query_index, concatenated: where the outputs go

    @classmethod
    def from_chains(cls, chains: list[tuple[int, int, int, list[tuple[int, int]]]], length: int,
                    device: torch.device | str) -> PrefixPlan:
        """Plan for chains ``(row, start, size, ancestor spans [(start, size)])`` in rows of ``length`` tokens."""
        by_shape: dict[tuple[int, int], tuple[list[Tensor], list[Tensor]]] = {}
        for row, start, size, spans in chains:
            base = row * length
            keys = [torch.arange(base + s, base + s + n) for s, n in [*spans, (start, size)]]
            queries, key_lists = by_shape.setdefault((size, sum(n for _, n in spans) + size), ([], []))
            queries.append(torch.arange(base + start, base + start + size))
            key_lists.append(torch.cat(keys))
        groups = tuple(
            ChainGroup(torch.cat(q).to(device), torch.cat(k).to(device), len(q), q_len, k_len)
            for (q_len, k_len), (q, k) in by_shape.items()
        )
        query_index = torch.cat([g.query_index for g in groups]) if groups else torch.zeros(0, dtype=torch.long)
        return cls(groups, query_index.to(device))


@dataclass
class PrefixRows(ModelRows):
    """:class:`ModelRows` whose ``attention_mask`` is only a [R, T] padding mask: ``plan`` says who sees whom."""

    plan: PrefixPlan

    def model_inputs(self, model: nn.Module) -> dict[str, Any]:
        """Keyword arguments for the model body; the plan reaches :func:`prefix_attention_forward` through them."""
        impl = getattr(model.config, "_attn_implementation", None)
        if impl != PREFIX_ATTENTION:
            raise ConfigError(f"rows of the prefix layout need the model's attention implementation "
                              f"{PREFIX_ATTENTION!r} (inspo.prefix_attention.register()), not {impl!r}")
        # transformers builds no mask for an attention function it has no mask function for: None is passed on.
        return {"input_ids": self.input_ids, "position_ids": self.position_ids, "attention_mask": None,
                "prefix_plan": self.plan}


class PrefixLayout(PackedLayout):
    """The packed layout (same rows, positions and targets) with a :class:`PrefixPlan` instead of a 4D mask.

    Args:
        max_tokens_per_row: token budget of a row holding several pairs; None puts each pair in its own row.
    """

    needs_4d_mask = False  # the attention mask is the padding mask; the plan says who sees whom

    def finish(self, rows: RowBuilder, model_rows: ModelRows) -> PrefixRows:
        plan = PrefixPlan.from_chains(chains(rows.spans), model_rows.input_ids.shape[1], model_rows.input_ids.device)
        return PrefixRows(**{f.name: getattr(model_rows, f.name) for f in fields(model_rows)}, plan=plan)


def chains(spans: list[Span]) -> list[tuple[int, int, int, list[tuple[int, int]]]]:
    """Maximal runs of spans, each the parent of the next and right after it, as ``(row, start, size, ancestor
    spans [(start, size)], root first, adjacent ones merged)``: one attention call each (the module docstring)."""
    runs: list[list[Span]] = []
    for span in spans:  # placement order: a parent before its children
        if runs and span.parent is runs[-1][-1] and span.start == span.parent.end:
            runs[-1].append(span)  # the parent is right before it: one causal span
        else:
            runs.append([span])
    out = []
    for run in runs:
        keys: list[tuple[int, int]] = []
        for ancestor in reversed(run[0].ancestors()):  # root first: keys in sequence order
            if keys and keys[-1][0] + keys[-1][1] == ancestor.start:
                keys[-1] = (keys[-1][0], keys[-1][1] + ancestor.end - ancestor.start)  # adjacent ancestors: one span
            else:
                keys.append((ancestor.start, ancestor.end - ancestor.start))
        out.append((run[0].row, run[0].start, run[-1].end - run[0].start, keys))
    return out


def prefix_attention_forward(module: nn.Module, query: Tensor, key: Tensor, value: Tensor,
                             attention_mask: Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                             prefix_plan: PrefixPlan | None = None, **kwargs: Any) -> tuple[Tensor, None]:
    """Attention for packed rows following ``prefix_plan`` (transformers' attention-function signature).

    ``query`` is [R, H, T, D], ``key``/``value`` [R, Hkv, T, D]; returns [R, T, H, D]. Padding positions, which no
    chain holds, get a zero output (they are never read as targets).
    """
    if prefix_plan is None:
        raise ConfigError(f"attention {PREFIX_ATTENTION!r} needs rows built by inspo.prefix_attention.PrefixLayout")
    rows, heads, length, dim = query.shape
    kv_heads = key.shape[1]
    flat_q = query.transpose(1, 2).reshape(rows * length, heads, dim)
    flat_k = key.transpose(1, 2).reshape(rows * length, kv_heads, dim)
    flat_v = value.transpose(1, 2).reshape(rows * length, kv_heads, dim)
    outputs = []
    for g in prefix_plan.groups:
        q = flat_q.index_select(0, g.query_index).view(g.count, g.q_len, heads, dim).transpose(1, 2)
        k = flat_k.index_select(0, g.key_index).view(g.count, g.k_len, kv_heads, dim).transpose(1, 2)
        v = flat_v.index_select(0, g.key_index).view(g.count, g.k_len, kv_heads, dim).transpose(1, 2)
        if g.q_len == g.k_len:  # no ancestors: plain causal attention, GQA handled by the kernel
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout, scale=scaling,
                                                 enable_gqa=kv_heads != heads)
        else:  # the lower-right causal bias does not take enable_gqa on every path: repeat the kv heads
            k, v = (t.repeat_interleave(heads // kv_heads, dim=1) for t in (k, v))
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=causal_lower_right(g.q_len, g.k_len),
                                                 dropout_p=dropout, scale=scaling)
        outputs.append(out.transpose(1, 2).reshape(g.count * g.q_len, heads, dim))
    flat = flat_q.new_zeros(rows * length, heads, dim)
    if outputs:
        flat = flat.index_copy(0, prefix_plan.query_index, torch.cat(outputs))
    return flat.view(rows, length, heads, dim), None


def register() -> str:
    """Register :func:`prefix_attention_forward` with transformers (idempotent); returns its name."""
    from transformers import AttentionInterface

    AttentionInterface.register(PREFIX_ATTENTION, prefix_attention_forward)
    return PREFIX_ATTENTION
