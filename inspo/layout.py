"""How a batch of pairs becomes model rows: one padded row per sequence, or one packed row per pair.

A conditioning names, per target, the segments it is conditioned on (``inspo.conditioning``). Within a pair
those sequences share prefixes, so they form a prefix tree whose nodes are segments, e.g. for InSPO with the raw
template: ``x -> y_w -> y_l`` and ``x -> y_l -> y_w``. A target's log-prob is read from its node; the first token
of a node is predicted by the last token of its parent.

- :class:`SeparateLayout` (the baseline, what the InSPO authors do): one right-padded row per leaf of the tree,
  ordinary causal attention. Exact for every model and attention implementation.
- :class:`PackedLayout` (``shared/DESIGN.md``, "Packed layout"): every node of a pair placed once in one row, with
  explicit position ids (a node starts at the summed length of its ancestors) and a 4D mask in which a token sees
  its own node causally and all of its ancestors, nothing else. InSPO's row is ``[x | y_w, y_l | y_l, y_w]``:
  the prompt is computed once. Exact wherever the attention implementation honours a 4D mask (sdpa, eager, and
  flex_attention through :func:`to_block_mask`); :func:`packed_unsupported_reason` says where it does not, and
  the module then falls back to ``separate``. With ``max_tokens_per_row`` several pairs share a row as
  block-diagonal segments.

Labels are built per target span, never by shifting a whole row, so a seam between branches is never a target.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, NamedTuple

import torch
from torch import Tensor

from inspo.conditioning import Sequences
from inspo.errors import ConfigError
from inspo.mixers import non_attention_mixer
from inspo.registry import Registry


@dataclass
class ModelRows:
    """Model inputs for a batch of pairs, and where each target token is read from.

    Attributes:
        input_ids: [R, T] token ids (pad where nothing is).
        position_ids: [R, T] explicit position ids.
        attention_mask: [R, T] padding mask (1 = token) for causal rows, or [R, 1, T, T] bool (True = may attend).
        pred_index: [N] flat index into the R*T outputs whose logits predict each target token.
        labels: [N] the target token ids.
        slot: [N] target slot of each token: ``pair * len(names) + names.index(target)``.
        names: the target names, in slot order.
        num_pairs: number of pairs B.

    A layout lists the tokens of each target in target order (not necessarily next to each other): the k-th entry
    of ``slot`` equal to s is token k of target s (:meth:`target_positions`; LD-DPO's split reads it).
    """

    input_ids: Tensor
    position_ids: Tensor
    attention_mask: Tensor
    pred_index: Tensor
    labels: Tensor
    slot: Tensor
    names: tuple[str, ...]
    num_pairs: int

    @property
    def num_slots(self) -> int:
        return self.num_pairs * len(self.names)

    def target_positions(self) -> Tensor:
        """[N] index of each target token within its target (0 for a target's first token)."""
        order = torch.argsort(self.slot, stable=True)
        counts = torch.bincount(self.slot, minlength=self.num_slots)
        starts = counts.cumsum(0) - counts
        ranks = torch.arange(len(order), device=order.device) - starts[self.slot[order]]
        return torch.empty_like(ranks).index_copy_(0, order, ranks)


@dataclass(eq=False)
class Node:
    """One segment of a pair's prefix tree: its tokens, where its positions start, its parent and children."""

    ids: list[int]
    start_position: int  # position id of the first token: the summed length of the ancestors
    parent: Node | None
    children: list[Node] = field(default_factory=list)

    def ancestors(self) -> list[Node]:
        """Parent, grandparent, ..., root."""
        node, out = self.parent, []
        while node is not None:
            out.append(node)
            node = node.parent
        return out

    def path(self) -> list[Node]:
        """Root, ..., this node: the sequence this node ends."""
        return [*reversed(self.ancestors()), self]


class PrefixTree(NamedTuple):
    """One pair's prefix tree: every node (parents before children) and the node holding each target."""

    nodes: list[Node]
    targets: dict[str, Node]

    def leaves(self) -> list[Node]:
        """The nodes without children, in tree order: one per distinct full sequence."""
        return [node for node in self.nodes if not node.children]


def prefix_tree(segments: dict[str, list[int]], sequences: Sequences) -> PrefixTree:
    """Nodes of one pair's prefix tree (parents before children) and the node holding each target."""
    nodes: dict[tuple[str, ...], Node] = {}
    targets: dict[str, Node] = {}
    for name, keys in sequences.items():
        path = tuple(k for k in keys if segments[k])  # an empty template segment is no node at all
        if not path or path[-1] != keys[-1]:
            raise ValueError(f"target {name!r} ({keys[-1]}) has no tokens")
        parent: Node | None = None
        for depth in range(1, len(path) + 1):
            node = nodes.get(path[:depth])
            if node is None:
                start = 0 if parent is None else parent.start_position + len(parent.ids)
                node = nodes[path[:depth]] = Node(segments[path[depth - 1]], start, parent)
                if parent is not None:
                    parent.children.append(node)
            parent = node
        if parent.parent is None:
            raise ValueError(f"target {name!r} has no context to be predicted from")
        targets[name] = parent
    return PrefixTree(list(nodes.values()), targets)


@dataclass(frozen=True, eq=False)
class Span:
    """One copy of a node placed in a row: it attends to itself causally and to the spans of its ``parent`` chain.

    Attributes:
        node: the node whose tokens these are.
        row: the row index.
        start: the column of the node's first token.
        parent: the span of the parent copy this copy continues (None for a root).
    """

    node: Node
    row: int
    start: int
    parent: Span | None

    @property
    def end(self) -> int:
        return self.start + len(self.node.ids)

    @property
    def predictor(self) -> int:
        """The column whose output predicts the node's first token: the parent's last token (-1 for a root)."""
        return -1 if self.parent is None else self.parent.end - 1

    def ancestors(self) -> list[Span]:
        span, out = self.parent, []
        while span is not None:
            out.append(span)
            span = span.parent
        return out


@dataclass
class RowBuilder:
    """Rows under construction: token ids and position ids per row, and every span placed so far."""

    ids: list[list[int]] = field(default_factory=list)
    positions: list[list[int]] = field(default_factory=list)
    spans: list[Span] = field(default_factory=list)

    def new_row(self) -> int:
        """Start an empty row; returns its index."""
        self.ids.append([])
        self.positions.append([])
        return len(self.ids) - 1

    def place(self, row: int, node: Node, parent: Span | None = None) -> Span:
        """Append ``node`` to ``row`` after the copy ``parent`` of its parent node (same row); returns its span."""
        # The mask and the predicting position come from the parent span: it must be a copy of the parent node.
        if (None if parent is None else parent.node) is not node.parent or (parent is not None and parent.row != row):
            raise ValueError("a node must be placed after a copy of its own parent node, in the same row")
        span = Span(node, row, len(self.ids[row]), parent)
        self.ids[row] += node.ids
        self.positions[row] += range(node.start_position, node.start_position + len(node.ids))
        self.spans.append(span)
        return span


class Layout:
    """Base class: turns pairs (named segments) into :class:`ModelRows` for a set of target sequences.

    A new layout overrides one hook, :meth:`place`: put one pair's prefix tree into rows (``rows.new_row()``,
    ``rows.place(row, node, parent_span)``) and say which span each node's log-probs are read from. The attention
    mask follows from the spans: with ``needs_4d_mask`` every span sees itself causally and its parent chain only
    (a [R, 1, T, T] mask), else each row is one causal sequence and gets a padding mask. Register the class with
    ``@LAYOUTS.register("name")``; select it with ``model.layout: name`` or by ``class_path`` and ``init_args``.
    """

    needs_4d_mask: ClassVar[bool] = False

    @property
    def name(self) -> str:
        """The registered short name, or the class name of an unregistered layout."""
        return LAYOUTS.name_of(type(self)) or type(self).__name__

    def place(self, tree: PrefixTree, rows: RowBuilder) -> dict[Node, Span]:
        """Place one pair's nodes in ``rows``; returns the span each node is read from (every target's node)."""
        raise NotImplementedError

    def build(
        self, pairs: list[dict[str, list[int]]], sequences: Sequences, pad_id: int, device: torch.device | str = "cpu"
    ) -> ModelRows:
        """Rows, positions, mask and target indices for ``pairs``, scoring the targets named by ``sequences``."""
        rows = RowBuilder()
        pred: list[tuple[int, int]] = []
        labels: list[int] = []
        slots: list[int] = []
        names = tuple(sequences)
        for p, segments in enumerate(pairs):
            tree = prefix_tree(segments, sequences)
            read_from = self.place(tree, rows)
            for n, name in enumerate(names):
                node = tree.targets[name]
                span = read_from[node]
                pred.extend([(span.row, span.predictor)] + [(span.row, span.start + k) for k in range(len(node.ids) - 1)])
                labels.extend(node.ids)
                slots.extend([p * len(names) + n] * len(node.ids))
        length = max(map(len, rows.ids))
        input_ids = torch.full((len(rows.ids), length), pad_id, dtype=torch.long)
        position_ids = torch.zeros((len(rows.ids), length), dtype=torch.long)
        for r, (ids, pos) in enumerate(zip(rows.ids, rows.positions)):
            input_ids[r, : len(ids)] = torch.tensor(ids)
            position_ids[r, : len(pos)] = torch.tensor(pos)
        pred_index = torch.tensor([r * length + t for r, t in pred], dtype=torch.long)
        return self.finish(rows, ModelRows(
            input_ids=input_ids.to(device),
            position_ids=position_ids.to(device),
            attention_mask=self.attention_mask(rows, length).to(device),
            pred_index=pred_index.to(device),
            labels=torch.tensor(labels, dtype=torch.long, device=device),
            slot=torch.tensor(slots, dtype=torch.long, device=device),
            names=names,
            num_pairs=len(pairs),
        ))

    def finish(self, rows: RowBuilder, model_rows: ModelRows) -> ModelRows:
        """Hook for a layout that gives the model more than a mask (``inspo.prefix_attention``); default: as is."""
        return model_rows

    def attention_mask(self, rows: RowBuilder, length: int) -> Tensor:
        """[R, 1, T, T] bool span mask if ``needs_4d_mask``, else a [R, T] padding mask (1 = token)."""
        return span_mask(rows, length) if self.needs_4d_mask else padding_mask(rows, length)


def padding_mask(rows: RowBuilder, length: int) -> Tensor:
    """[R, T] long: 1 where a row holds a token (each row is one causal sequence)."""
    mask = torch.zeros((len(rows.ids), length), dtype=torch.long)
    for r, ids in enumerate(rows.ids):
        mask[r, : len(ids)] = 1
    return mask


def span_mask(rows: RowBuilder, length: int) -> Tensor:
    """[R, 1, T, T] bool (True = may attend): a span's tokens see their own span causally and every span of its
    parent chain, nothing else (not the other branch, not another pair's spans)."""
    # Padding queries attend to themselves only: a fully masked query row would give NaN under sdpa.
    out = torch.eye(length, dtype=torch.bool).repeat(len(rows.ids), 1, 1)
    for span in rows.spans:
        s, e = span.start, span.end
        out[span.row, s:e, s:e] = torch.ones((e - s, e - s), dtype=torch.bool).tril()
        for ancestor in span.ancestors():
            out[span.row, s:e, ancestor.start : ancestor.end] = True
    return out.unsqueeze(1)


LAYOUTS: Registry[Layout] = Registry("layout", Layout)
"""Short name -> layout class (``model.layout: NAME``)."""


@LAYOUTS.register("separate")
class SeparateLayout(Layout):
    """One right-padded causal row per leaf sequence (e.g. InSPO: [x, y_l, y_w] and [x, y_w, y_l])."""

    def place(self, tree: PrefixTree, rows: RowBuilder) -> dict[Node, Span]:
        read_from: dict[Node, Span] = {}
        for leaf in tree.leaves():
            row, span = rows.new_row(), None
            for node in leaf.path():
                span = rows.place(row, node, span)
                read_from.setdefault(node, span)  # a node is read from the first row holding it
        return read_from


@LAYOUTS.register("packed")
class PackedLayout(Layout):
    """One row per pair holding every segment once: prefix shared, branches isolated by a 4D mask.

    With ``max_tokens_per_row`` several pairs share a row as block-diagonal segments (first fit, in batch order):
    a pair goes into the first row with room for all its tokens, else it starts a new row; a pair longer than the
    budget gets a row of its own. Position ids restart at 0 for every pair and no token sees another pair, so the
    log-probs are the same as with one pair per row; packing only removes padding.

    Args:
        max_tokens_per_row: token budget of a row holding several pairs; None puts each pair in its own row.
    """

    needs_4d_mask = True

    def __init__(self, max_tokens_per_row: int | None = None) -> None:
        if max_tokens_per_row is not None and max_tokens_per_row < 1:
            raise ConfigError(f"layout.max_tokens_per_row must be >= 1 or None, got {max_tokens_per_row}")
        self.max_tokens_per_row = max_tokens_per_row

    def _row_for(self, size: int, rows: RowBuilder) -> int:
        """Index of the first row with room for ``size`` more tokens under the budget, or a new row."""
        if self.max_tokens_per_row is not None:
            for r, ids in enumerate(rows.ids):
                if len(ids) + size <= self.max_tokens_per_row:
                    return r
        return rows.new_row()

    def place(self, tree: PrefixTree, rows: RowBuilder) -> dict[Node, Span]:
        row = self._row_for(sum(len(node.ids) for node in tree.nodes), rows)
        read_from: dict[Node, Span] = {}
        for node in tree.nodes:  # parents come before children
            read_from[node] = rows.place(row, node, None if node.parent is None else read_from[node.parent])
        return read_from


def make_layout(layout: Layout | str | dict[str, Any]) -> Layout:
    """A layout from an instance, a short name (``packed``, ``separate``) or ``{"class_path", "init_args"}``."""
    return LAYOUTS.resolve(layout)


MASK_4D_ATTENTION = ("sdpa", "eager", "flex_attention")
"""Attention implementations that honour a custom 4D mask (flex_attention through a BlockMask, see below)."""


def packed_unsupported_reason(model: Any) -> str | None:
    """Why the packed layout would not be exact for this model, or None if it is.

    Args:
        model: the instantiated model (its config and its modules are inspected), or only its HF config.

    flash-attention kernels take a padding mask only, not a 4D mask; a sliding-window model would have its
    window dropped, because transformers uses a custom 4D mask as given, for every layer; and any token mixer that
    is not attention (state-space, convolution, linear attention, recurrence: hybrid models such as Falcon-H1,
    Jamba, Bamba, Granite-4-H, Nemotron-H, LFM2) ignores the mask and lets one branch read the other
    (:func:`inspo.mixers.non_attention_mixer`, which answers "unsupported" when it cannot tell).
    """
    config = getattr(model, "config", model)
    impl = getattr(config, "_attn_implementation", None) or "eager"
    if impl not in MASK_4D_ATTENTION:
        return f"attention implementation {impl!r} cannot take a 4D attention mask"
    window = getattr(config, "sliding_window", None)
    if window and getattr(config, "use_sliding_window", True) is not False:
        return f"the model uses sliding-window attention (window {window}), which a custom 4D mask would drop"
    return non_attention_mixer(model)


def to_block_mask(mask: Tensor, block_size: int = 128) -> Any:
    """A flex_attention ``BlockMask`` for a [R, 1, T, T] bool mask (True = may attend).

    flex_attention skips every ``block_size`` x ``block_size`` tile the mask leaves empty (the other branch, the
    other pairs of a row), which sdpa cannot: that is the GPU fast path for packed rows. The mask function reads the
    dense mask, so the BlockMask is exact by construction.
    """
    from torch.nn.attention.flex_attention import create_block_mask

    dense = mask[:, 0]

    def mask_mod(b: Tensor, h: Tensor, q: Tensor, kv: Tensor) -> Tensor:
        return dense[b, q, kv]

    rows, length = dense.shape[0], dense.shape[-1]
    return create_block_mask(mask_mod, rows, None, length, length, device=mask.device, BLOCK_SIZE=block_size)
