"""Worked example: a new layout by overriding one hook, :meth:`Layout.place` (README, "Extending").

"Concat" puts every full sequence of a pair back to back in one row, each attending only to itself: InSPO's row
is ``[x, y_l, y_w | x, y_w, y_l]`` (the prompt twice), standard DPO's ``[x, y_w | x, y_l]``. No padding between
sequences and no prefix sharing: against ``packed`` it measures what sharing the prompt buys, against ``separate``
what removing padding buys. Positions come from the nodes (each sequence starts at 0) and the 4D mask from the
spans (``needs_4d_mask``), so it is exact wherever ``packed`` is, and falls back to ``separate`` where not.

Select it with ``model.layout: concat`` once the module is imported (``INSPO_PLUGINS=tests.examples.concat inspo
fit ...``), or by ``class_path: tests.examples.concat.ConcatLayout``. Exercised by ``tests/test_examples.py``.
"""

from __future__ import annotations

from inspo.layout import LAYOUTS, Layout, Node, PrefixTree, RowBuilder, Span


@LAYOUTS.register("concat")
class ConcatLayout(Layout):
    """One row per pair: its full sequences (the leaves of its prefix tree) back to back, each its own causal block."""

    needs_4d_mask = True  # each span sees itself causally and its parent chain: here, its own sequence only

    def place(self, tree: PrefixTree, rows: RowBuilder) -> dict[Node, Span]:
        row, read_from = rows.new_row(), {}
        for leaf in tree.leaves():
            span = None
            for node in leaf.path():  # root first: a fresh copy of every node, right after its parent's copy
                span = rows.place(row, node, span)
                read_from.setdefault(node, span)  # a node on several paths (x) is read from its first copy
        return read_from
