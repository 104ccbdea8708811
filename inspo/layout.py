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
from typing import Any, ClassVar

import torch
from torch import Tensor

from inspo.conditioning import Sequences
from inspo.errors import ConfigError
from inspo.mixers import non_attention_mixer


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


@dataclass(eq=False)
class _Node:
    ids: list[int]
    start_position: int  # position id of the first token: the summed length of the ancestors
    parent: _Node | None
    children: list[_Node] = field(default_factory=list)

    def ancestors(self) -> list[_Node]:
        node, out = self.parent, []
        while node is not None:
            out.append(node)
            node = node.parent
        return out


def prefix_tree(segments: dict[str, list[int]], sequences: Sequences) -> tuple[list[_Node], dict[str, _Node]]:
    """Nodes of one pair's prefix tree (parents before children) and the node holding each target."""
    nodes: dict[tuple[str, ...], _Node] = {}
    targets: dict[str, _Node] = {}
    for name, keys in sequences.items():
        path = tuple(k for k in keys if segments[k])  # an empty template segment is no node at all
        if not path or path[-1] != keys[-1]:
            raise ValueError(f"target {name!r} ({keys[-1]}) has no tokens")
        parent: _Node | None = None
        for depth in range(1, len(path) + 1):
            node = nodes.get(path[:depth])
            if node is None:
                start = 0 if parent is None else parent.start_position + len(parent.ids)
                node = nodes[path[:depth]] = _Node(segments[path[depth - 1]], start, parent)
                if parent is not None:
                    parent.children.append(node)
            parent = node
        if parent.parent is None:
            raise ValueError(f"target {name!r} has no context to be predicted from")
        targets[name] = parent
    return list(nodes.values()), targets


class Layout:
    """Base class: turns pairs (named segments) into :class:`ModelRows` for a set of target sequences."""

    name: ClassVar[str]
    needs_4d_mask: ClassVar[bool] = False

    def build(
        self, pairs: list[dict[str, list[int]]], sequences: Sequences, pad_id: int, device: torch.device | str = "cpu"
    ) -> ModelRows:
        rows: list[list[int]] = []
        positions: list[list[int]] = []
        masks: list[Any] = []  # per row, whatever the layout's _mask needs
        pred, labels, slots = [], [], []
        names = tuple(sequences)
        for p, segments in enumerate(pairs):
            nodes, targets = prefix_tree(segments, sequences)
            # node -> (row, offset of its first token, offset of the token that predicts its first token)
            where = self._place(nodes, rows, positions, masks)
            for n, name in enumerate(names):
                node = targets[name]
                row, offset, first = where[node]
                pred.extend([(row, first)] + [(row, offset + k) for k in range(len(node.ids) - 1)])
                labels.extend(node.ids)
                slots.extend([p * len(names) + n] * len(node.ids))
        length = max(map(len, rows))
        input_ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
        position_ids = torch.zeros((len(rows), length), dtype=torch.long)
        for r, (ids, pos) in enumerate(zip(rows, positions)):
            input_ids[r, : len(ids)] = torch.tensor(ids)
            position_ids[r, : len(pos)] = torch.tensor(pos)
        pred_index = torch.tensor([r * length + t for r, t in pred], dtype=torch.long)
        return ModelRows(
            input_ids=input_ids.to(device),
            position_ids=position_ids.to(device),
            attention_mask=self._mask(rows, masks, length).to(device),
            pred_index=pred_index.to(device),
            labels=torch.tensor(labels, dtype=torch.long, device=device),
            slot=torch.tensor(slots, dtype=torch.long, device=device),
            names=names,
            num_pairs=len(pairs),
        )

    def _place(
        self, nodes: list[_Node], rows: list[list[int]], positions: list[list[int]], masks: list[Any]
    ) -> dict[_Node, tuple[int, int, int]]:
        raise NotImplementedError

    def _mask(self, rows: list[list[int]], masks: list[Any], length: int) -> Tensor:
        raise NotImplementedError


class SeparateLayout(Layout):
    """One right-padded causal row per leaf sequence (e.g. InSPO: [x, y_l, y_w] and [x, y_w, y_l])."""

    name = "separate"

    def _place(self, nodes, rows, positions, masks):
        where: dict[_Node, tuple[int, int, int]] = {}
        for leaf in (n for n in nodes if not n.children):
            path = [*reversed(leaf.ancestors()), leaf]
            row, offset = len(rows), 0
            ids: list[int] = []
            for node in path:
                # a node is read from the first row holding it; its parent is right before it in that row
                where.setdefault(node, (row, offset, offset - 1))
                ids += node.ids
                offset += len(node.ids)
            rows.append(ids)
            positions.append(list(range(len(ids))))
        return where

    def _mask(self, rows, masks, length):
        mask = torch.zeros((len(rows), length), dtype=torch.long)
        for r, ids in enumerate(rows):
            mask[r, : len(ids)] = 1
        return mask


class PackedLayout(Layout):
    """One row per pair holding every segment once: prefix shared, branches isolated by a 4D mask.

    With ``max_tokens_per_row`` several pairs share a row as block-diagonal segments (first fit, in batch order):
    a pair goes into the first row with room for all its tokens, else it starts a new row; a pair longer than the
    budget gets a row of its own. Position ids restart at 0 for every pair and no token sees another pair, so the
    log-probs are the same as with one pair per row; packing only removes padding.

    Args:
        max_tokens_per_row: token budget of a row holding several pairs; None puts each pair in its own row.
    """

    name = "packed"
    needs_4d_mask = True

    def __init__(self, max_tokens_per_row: int | None = None) -> None:
        if max_tokens_per_row is not None and max_tokens_per_row < 1:
            raise ConfigError(f"max_tokens_per_row must be >= 1 or None, got {max_tokens_per_row}")
        self.max_tokens_per_row = max_tokens_per_row

    def _row_for(self, size: int, rows: list[list[int]]) -> int:
        """Index of the first row with room for ``size`` more tokens under the budget, or ``len(rows)``."""
        if self.max_tokens_per_row is not None:
            for r, ids in enumerate(rows):
                if len(ids) + size <= self.max_tokens_per_row:
                    return r
        return len(rows)

    def _place(self, nodes, rows, positions, masks):
        size = sum(len(node.ids) for node in nodes)
        row = self._row_for(size, rows)
        if row == len(rows):
            rows.append([])
            positions.append([])
            masks.append([])
        base = offset = len(rows[row])
        where: dict[_Node, tuple[int, int, int]] = {}
        for node in nodes:  # parents come before children
            parent_end = -1 if node.parent is None else where[node.parent][1] + len(node.parent.ids) - 1
            where[node] = (row, offset, parent_end)
            rows[row] += node.ids
            positions[row] += range(node.start_position, node.start_position + len(node.ids))
            offset += len(node.ids)
        block = torch.zeros((size, size), dtype=torch.bool)
        for node in nodes:
            o, n = where[node][1] - base, len(node.ids)
            block[o : o + n, o : o + n] = torch.ones((n, n), dtype=torch.bool).tril()
            for ancestor in node.ancestors():
                a = where[ancestor][1] - base
                block[o : o + n, a : a + len(ancestor.ids)] = True
        masks[row].append((base, block))
        return where

    def _mask(self, rows, masks, length):
        # Padding queries attend to themselves only: a fully masked query row would give NaN under sdpa.
        out = torch.eye(length, dtype=torch.bool).repeat(len(rows), 1, 1)
        for r, blocks in enumerate(masks):
            for base, block in blocks:  # block-diagonal: one block per pair, nothing between pairs
                n = block.shape[0]
                out[r, base : base + n, base : base + n] = block
        return out.unsqueeze(1)


LAYOUTS: dict[str, type[Layout]] = {c.name: c for c in (SeparateLayout, PackedLayout)}

MASK_4D_ATTENTION = ("sdpa", "eager", "flex_attention")
"""Attention implementations that honour a custom 4D mask (flex_attention through a BlockMask, see below)."""


def make_layout(name: str, max_tokens_per_row: int | None = None) -> Layout:
    """The layout called ``name``; ``max_tokens_per_row`` lets the packed layout put several pairs in a row."""
    if name not in LAYOUTS:
        raise ConfigError(f"unknown layout {name!r}; choose one of: {', '.join(sorted(LAYOUTS))}")
    return PackedLayout(max_tokens_per_row) if name == "packed" else LAYOUTS[name]()


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
