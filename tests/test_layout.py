"""Exactness of every layout against separately computed sequences, and chunked vs full log-softmax."""

from __future__ import annotations

import pytest
import torch
from torch.utils.checkpoint import checkpoint

from inspo import logprobs
from inspo.conditioning import REFERENCE_SEQUENCES, ReflectionTemplate, make_conditioning
from inspo.layout import LAYOUTS, PackedLayout, RowBuilder, make_layout, prefix_tree
from inspo.logprobs import KEEP_LOGITS_BYTES, target_logps, token_logps, token_logps_full
from tests.helpers import assert_layout_exact, random_pairs, tiny_model

LENGTHS = [(5, 3, 4), (2, 1, 6), (7, 2, 2), (1, 1, 1)]


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("conditioning", ["standard", "inspo", "inspo-template"])
def test_layout_matches_separate_sequences(tokenizer, attn, layout, conditioning):
    """Policy targets (a_w, a_l, p_w, p_l) and reference targets equal separately built sequences to 1e-5."""
    model = tiny_model(attn)
    template = ReflectionTemplate("Other answer:", "\nBetter answer:") if conditioning.endswith("template") else None
    cond = make_conditioning(conditioning.split("-")[0], tokenizer, template)
    segments = [cond.segments(*p) for p in random_pairs(4, LENGTHS)]
    assert_layout_exact(make_layout(layout), model, cond, segments, tokenizer.pad_token_id)


def test_inspo_packed_row_shares_the_prompt(tokenizer):
    """InSPO's packed row holds x once and both branches: P + 2W + 2L tokens."""
    cond = make_conditioning("inspo", tokenizer)
    rows = make_layout("packed").build([cond.segments([1] * 5, [2] * 3, [3] * 4)], cond.policy_sequences, 0)
    assert rows.input_ids.shape == (1, 5 + 2 * 3 + 2 * 4)
    assert rows.position_ids[0].tolist() == [*range(12), *range(5, 12)]
    nodes, targets = prefix_tree(cond.segments([1] * 5, [2] * 3, [3] * 4), cond.policy_sequences)
    assert [len(n.ids) for n in nodes] == [5, 4, 3, 3, 4]  # x | y_l, y_w | y_w, y_l
    assert targets["chosen"].parent.ids == [3] * 4  # a_w is read from y_w after y_l
    separate = make_layout("separate").build([cond.segments([1] * 5, [2] * 3, [3] * 4)], cond.policy_sequences, 0)
    assert separate.input_ids.shape == (2, 12)  # [x, y_w, y_l] and [x, y_l, y_w], as the authors' code does


def test_packed_branches_do_not_see_each_other(tokenizer):
    cond = make_conditioning("standard", tokenizer)
    rows = make_layout("packed").build([cond.segments([1] * 2, [2] * 2, [3] * 2)], cond.policy_sequences, 0)
    mask = rows.attention_mask[0, 0]
    assert not mask[4:6, 2:4].any()  # y_l may not attend y_w
    assert mask[4:6, 0:2].all()  # but sees the prompt


def test_chunked_logps_equal_full_log_softmax_values_and_grads():
    model = tiny_model().train()
    cond_rows = make_layout("packed").build(
        [{"x": p, "y_w": c, "y_l": r} for p, c, r in random_pairs(3, LENGTHS)], REFERENCE_SEQUENCES, 0
    )
    chunked = token_logps(model, cond_rows, chunk_size=3)
    grads_chunked = torch.autograd.grad(chunked.sum(), list(model.parameters()))
    full = token_logps_full(model, cond_rows)
    grads_full = torch.autograd.grad(full.sum(), list(model.parameters()))
    torch.testing.assert_close(chunked, full, atol=1e-5, rtol=0)
    for a, b in zip(grads_chunked, grads_full):
        torch.testing.assert_close(a, b, atol=5e-5, rtol=1e-3)  # recompute order: float noise only


def test_target_log_softmax_has_autograds_values_and_gradient():
    """The head's fused log-softmax-at-targets: gather of log_softmax, with g * (onehot - softmax) as gradient."""
    logits = torch.randn(6, 11, dtype=torch.float64, requires_grad=True)
    labels, grad = torch.tensor([0, 3, 3, 10, 5, 1]), torch.randn(6, dtype=torch.float64)
    fused = logprobs.TargetLogSoftmax.apply(logits, labels)
    plain = logits.log_softmax(-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    assert torch.equal(fused, plain)
    torch.testing.assert_close(torch.autograd.grad(fused, logits, grad)[0], torch.autograd.grad(plain, logits, grad)[0],
                               atol=1e-12, rtol=1e-12)
    assert torch.autograd.gradcheck(lambda x: logprobs.TargetLogSoftmax.apply(x, labels), (logits.detach().requires_grad_(),))


def test_head_logits_has_linears_values_and_gradients_also_tied_and_under_autocast():
    """The output projection with a fresh weight gradient (so a tied embedding's accumulates in place)."""
    hidden, weight, bias = (torch.randn(*shape, dtype=torch.float64, requires_grad=True) for shape in
                            ((5, 4), (9, 4), (9,)))
    assert torch.autograd.gradcheck(logprobs.HeadLogits.apply, (hidden, weight, bias))
    ids = torch.tensor([1, 8, 8, 0, 3])
    grads = []
    for head in (torch.nn.functional.linear, logprobs.HeadLogits.apply):  # tied: embedding lookup + head
        out = head(torch.nn.functional.embedding(ids, weight) * hidden, weight, None).logsumexp(-1).sum()
        grads.append(torch.autograd.grad(out, [hidden, weight]))
    for got, want in zip(*grads):
        torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-12)
    w32 = weight.detach().float().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logprobs.HeadLogits.apply(hidden.detach().float(), w32, None).float().sum().backward()
    assert w32.grad.dtype == torch.float32


def test_bf16_logps_are_fp32_and_close_to_fp32_model():
    """Log-softmax runs in fp32 also for bf16 models; bf16 and fp32 sums agree within 0.5 nats per 10 tokens."""
    rows = make_layout("packed").build(
        [{"x": p, "y_w": c, "y_l": r} for p, c, r in random_pairs(3, LENGTHS)], REFERENCE_SEQUENCES, 0
    )
    with torch.no_grad():
        fp32 = target_logps(tiny_model(), rows)
        bf16 = target_logps(tiny_model(dtype="bf16"), rows)
    assert bf16.dtype == torch.float32
    assert torch.isfinite(bf16).all()
    torch.testing.assert_close(bf16, fp32, atol=0.5, rtol=0.02)


@pytest.mark.parametrize("keep_bytes", [0, KEEP_LOGITS_BYTES], ids=["recomputed", "kept"])
def test_bf16_chunked_grads_equal_full_log_softmax_grads(keep_bytes, monkeypatch):
    """Under bf16 the chunked path (fp32 log-softmax, chunks recomputed in backward or kept) gives the full path's
    gradients."""
    model = tiny_model(dtype="bf16").train()
    rows = make_layout("packed").build(
        [{"x": p, "y_w": c, "y_l": r} for p, c, r in random_pairs(3, LENGTHS)], REFERENCE_SEQUENCES, 0
    )
    calls = []
    monkeypatch.setattr(logprobs, "checkpoint", lambda *a, **k: calls.append(1) or checkpoint(*a, **k))
    chunked = token_logps(model, rows, chunk_size=4, keep_bytes=keep_bytes)
    assert bool(calls) == (keep_bytes == 0)
    assert chunked.dtype == torch.float32
    grads_chunked = torch.autograd.grad(chunked.sum(), list(model.parameters()))
    grads_full = torch.autograd.grad(token_logps_full(model, rows).sum(), list(model.parameters()))
    for a, b in zip(grads_chunked, grads_full):
        assert a.dtype == torch.bfloat16 and torch.isfinite(a).all()
        a, b = a.float(), b.float()
        # Each bf16 gradient element is rounded once more or less depending on the path: allow two bf16 ulps of the
        # tensor's largest entry elementwise (2 * 2**-8 relative), and 1% of the tensor's norm overall (seen: <0.6%).
        torch.testing.assert_close(a, b, atol=2 * 2**-8 * b.abs().max().item(), rtol=2e-2)
        assert (a - b).norm() <= 1e-2 * b.norm()


def test_placement_hook_gets_typed_arguments_and_returns_spans(tokenizer):
    """Packed InSPO pair P=5, W=3, L=4 (nodes x | y_l, y_w | y_w, y_l): every node once in row 0; y_w after y_l
    starts at column 5 + 4 = 9 and is predicted from column 8 (the last token of y_l); the root from nothing (-1)."""
    cond = make_conditioning("inspo", tokenizer)
    tree = prefix_tree(cond.segments([1] * 5, [2] * 3, [3] * 4), cond.sequences())
    rows = RowBuilder()
    spans = PackedLayout().place(tree, rows)
    chosen = spans[tree.targets["chosen"]]
    assert (chosen.row, chosen.start, chosen.predictor, chosen.end) == (0, 9, 8, 12)
    assert spans[tree.nodes[0]].predictor == -1 and len(rows.ids[0]) == 5 + 2 * 3 + 2 * 4
    assert [span.start for span in rows.spans] == [0, 5, 9, 12, 15]


def test_a_node_placed_after_another_nodes_copy_is_refused():
    """The mask and the predicting column come from the parent span: a span of another node would leak or misalign."""
    tree = prefix_tree({"x": [1, 2], "y_w": [3], "y_l": [4]}, REFERENCE_SEQUENCES)
    rows = RowBuilder()
    row = rows.new_row()
    root = rows.place(row, tree.nodes[0])
    y_w = rows.place(row, tree.targets["chosen"], root)
    with pytest.raises(ValueError, match="after a copy of its own parent node"):
        rows.place(row, tree.targets["rejected"], y_w)
