"""Prefix attention: packed pairs attended span by span, with no dense [T, T] mask (issue 15).

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

Selection (:func:`choose_layout`): the ``packed`` layout becomes :class:`PrefixLayout` wherever this is exact:
the model's attention is sdpa, eager or flash-attention (the chains run through torch's sdpa kernels, which use
their own flash kernel on CUDA), also with a sliding window (a band on each chain's keys: a chain's keys are the
positions 0..k-1 of the separate sequence); not for hybrid models (a recurrent state would need the prompt's state,
not its keys) or attention with soft-capping or sinks. There the dense-mask path is kept or ``separate`` used, with
one log line; ``inspo.checks`` compares the chosen path with separate rows on the first batch of every model.

Registration: the first prefix rows a model sees switch its ``config._attn_implementation`` from ``BASE`` to
``inspo_prefix_BASE`` (:func:`use_prefix_attention`), registered in transformers' ``AttentionInterface`` and
``AttentionMaskInterface`` under that new name only, so nothing changes for other models. The function follows
the rows' plan when given one (``inspo.logprobs`` passes it through the model's keyword arguments) and otherwise
runs ``BASE`` itself with ``BASE``'s masks: generation, separate rows and the model's own forward are unchanged.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import Tensor, nn

from inspo.errors import ConfigError
from inspo.layout import Layout, ModelRows, PackedLayout, RowBuilder, SeparateLayout, Span, packed_unsupported_reason
from inspo.mixers import non_attention_mixer
from inspo.prefix_kernels import chain_attention

log = logging.getLogger("inspo")

PREFIX = "inspo_prefix_"
"""Prefix of the names the attention function is registered under: ``inspo_prefix_sdpa`` wraps ``sdpa``, etc."""
BASES = ("sdpa", "eager", "flash_attention_2", "flash_attention_3")
"""Attention implementations the prefix path can stand in for (it computes with torch's sdpa kernels)."""
PREFIX_ATTENTION = PREFIX + "sdpa"
"""The name for models computing with sdpa (the default)."""


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
    output_index: Tensor  # [R * T]: each position's row in the groups' concatenated outputs (padding: one past)

    @classmethod
    def from_chains(cls, chains: list[tuple[int, int, int, list[tuple[int, int]]]], rows: int, length: int,
                    device: torch.device | str) -> PrefixPlan:
        """Plan for chains ``(row, start, size, ancestor spans [(start, size)])`` in ``rows`` rows of ``length``
        tokens."""
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
        output_index = torch.full((rows * length,), len(query_index), dtype=torch.long)
        output_index[query_index.cpu()] = torch.arange(len(query_index))
        return cls(groups, query_index.to(device), output_index.to(device))


@dataclass
class PrefixRows(ModelRows):
    """:class:`ModelRows` whose ``attention_mask`` is only a [R, T] padding mask: ``plan`` says who sees whom."""

    plan: PrefixPlan

    def model_inputs(self, model: nn.Module) -> dict[str, Any]:
        """Keyword arguments for the model body; the plan reaches :func:`prefix_attention_forward` through them."""
        use_prefix_attention(model)
        # A 4D mask is taken as given (transformers builds no [T, T] mask); it is never read: the plan says who sees
        # whom. All False, so that a kernel reading it by mistake would produce NaN, not a silent leak.
        unread = torch.zeros((self.input_ids.shape[0], 1, 1, 1), dtype=torch.bool, device=self.input_ids.device)
        return {"input_ids": self.input_ids, "position_ids": self.position_ids, "attention_mask": unread,
                "prefix_plan": self.plan}


class PrefixLayout(PackedLayout):
    """The packed layout (same rows, positions and targets) with a :class:`PrefixPlan` instead of a 4D mask.

    Args:
        max_tokens_per_row: token budget of a row holding several pairs; None puts each pair in its own row.
    """

    needs_4d_mask = False  # the attention mask is the padding mask; the plan says who sees whom

    @property
    def name(self) -> str:
        return "packed"  # the packed layout's rows, attended without its mask

    def finish(self, rows: RowBuilder, model_rows: ModelRows) -> PrefixRows:
        plan = PrefixPlan.from_chains(chains(rows.spans), *model_rows.input_ids.shape, model_rows.input_ids.device)
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
                             prefix_plan: PrefixPlan | None = None, sliding_window: int | None = None,
                             **kwargs: Any) -> tuple[Tensor, None]:
    """Attention for packed rows following ``prefix_plan`` (transformers' attention-function signature).

    ``query`` is [R, H, T, D], ``key``/``value`` [R, Hkv, T, D]; returns [R, T, H, D]. Padding positions, which no
    chain holds, get a zero output (they are never read as targets). ``sliding_window`` (passed by the attention
    modules of sliding-window families): query position p sees key positions (p - window, p], as transformers'
    masks; a chain's keys sit at positions 0..k-1, so the window is a band on the lower-right causal mask.
    """
    if prefix_plan is None:
        raise ConfigError(f"attention {PREFIX}* needs rows built by inspo.prefix_attention.PrefixLayout")
    if kwargs.get("softcap") is not None or kwargs.get("s_aux") is not None:
        raise ConfigError("the prefix attention path does not do attention soft-capping or sinks: use layout separate")
    window = sliding_window if sliding_window is not None else getattr(module, "sliding_window", None)
    rows, heads, length, dim = query.shape
    kv_heads = key.shape[1]
    device = query.device.type
    if torch.is_autocast_enabled(device):  # as autocast casts sdpa's inputs; the lower-right bias checks them first
        dtype = torch.get_autocast_dtype(device)
        query, key, value = query.to(dtype), key.to(dtype), value.to(dtype)
    flat_q = query.transpose(1, 2).reshape(rows * length, heads, dim)
    flat_k = key.transpose(1, 2).reshape(rows * length, kv_heads, dim)
    flat_v = value.transpose(1, 2).reshape(rows * length, kv_heads, dim)
    outputs = []
    for g in prefix_plan.groups:
        q = flat_q.index_select(0, g.query_index).view(g.count, g.q_len, heads, dim).transpose(1, 2)
        k = flat_k.index_select(0, g.key_index).view(g.count, g.k_len, kv_heads, dim).transpose(1, 2)
        v = flat_v.index_select(0, g.key_index).view(g.count, g.k_len, kv_heads, dim).transpose(1, 2)
        out = chain_attention(q, k, v, window, dropout, scaling)
        outputs.append(out.transpose(1, 2).reshape(g.count * g.q_len, heads, dim))
    # Scattered back by a gather from [outputs ; a zero row for padding]: index_copy would keep a copy of all the
    # outputs for its backward (it saves its source), where index_select keeps only the index.
    padding = flat_q.new_zeros(1, heads, dim, dtype=outputs[0].dtype if outputs else query.dtype)
    flat = torch.cat([*outputs, padding]).index_select(0, prefix_plan.output_index)
    return flat.view(rows, length, heads, dim), None


def _wrapped(base: str) -> Any:
    """The attention function registered as ``inspo_prefix_<base>``: the plan if given, else ``base`` itself."""

    def attention(module: nn.Module, query: Tensor, key: Tensor, value: Tensor, attention_mask: Tensor | None,
                  **kwargs: Any) -> tuple[Tensor, Tensor | None]:
        if kwargs.get("prefix_plan") is not None:
            return prefix_attention_forward(module, query, key, value, attention_mask, **kwargs)
        from transformers import AttentionInterface

        if base == "eager":  # each family has its own eager function, next to its attention module
            function = sys.modules[type(module).__module__].eager_attention_forward
        else:
            function = AttentionInterface._global_mapping[base]
        config, name = module.config, module.config._attn_implementation_internal
        config._attn_implementation_internal = base  # flash kernels are looked up by the config's name
        try:
            return function(module, query, key, value, attention_mask, **kwargs)
        finally:
            config._attn_implementation_internal = name

    attention.__name__ = f"{PREFIX}{base}"
    return attention


def register(base: str = "sdpa") -> str:
    """Register ``inspo_prefix_<base>`` with transformers' attention and mask interfaces (idempotent); its name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    if base not in BASES:
        raise ConfigError(f"the prefix attention path cannot stand in for attention {base!r} (it can for {BASES})")
    name = PREFIX + base
    if name not in AttentionInterface._global_mapping:
        AttentionInterface.register(name, _wrapped(base))
        AttentionMaskInterface.register(name, AttentionMaskInterface._global_mapping[base])
    return name


def use_prefix_attention(model: nn.Module) -> str:
    """Switch ``model`` (idempotent) to the prefix attention function wrapping its current attention; its name."""
    config = model.config
    impl = getattr(config, "_attn_implementation", None) or "eager"
    if impl.startswith(PREFIX):
        return impl
    if impl not in BASES:
        raise ConfigError(f"rows of the prefix layout need attention sdpa, eager or flash-attention, not {impl!r}")
    config._attn_implementation = register(impl)  # the setter passes it on to sub-configs
    return config._attn_implementation


def prefix_unsupported_reason(model: Any) -> str | None:
    """Why the prefix path would not be exact for this model (its config and modules), or None if it is."""
    config = getattr(model, "config", model)
    impl = getattr(config, "_attn_implementation", None) or "eager"
    if impl.removeprefix(PREFIX) not in BASES:
        return f"attention implementation {impl!r} is not one the prefix path stands in for ({', '.join(BASES)})"
    if getattr(config, "attn_logit_softcapping", None):
        return "the model soft-caps attention logits, which sdpa kernels do not"
    if isinstance(model, nn.Module) and any(hasattr(m, "sinks") for m in model.modules()):
        return "the model's attention has sinks, which sdpa kernels do not take"
    return non_attention_mixer(model, sliding_ok=True)


def choose_layout(layout: Layout, model: nn.Module) -> Layout:
    """The layout a run scores with: ``packed`` becomes :class:`PrefixLayout` where that is exact, else the dense
    mask is kept where that is exact, else ``separate``; each fallback in one log line."""
    prefix_reason = None
    if type(layout) is PackedLayout:  # a subclass keeps its own rows
        prefix_reason = prefix_unsupported_reason(model)
        if prefix_reason is None:
            return PrefixLayout(layout.max_tokens_per_row)
    reason = packed_unsupported_reason(model) if layout.needs_4d_mask else None
    if reason is not None:
        why = reason if prefix_reason is None else f"prefix attention: {prefix_reason}; a 4D mask: {reason}"
        log.warning("inspo: layout %r is not exact here (%s): using layout 'separate'", layout.name, why)
        return SeparateLayout()
    if prefix_reason is not None:
        log.info("inspo: prefix attention not used (%s): packed rows with a 4D mask", prefix_reason)
    return layout
