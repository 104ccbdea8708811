"""The prefix-attention path: packed pairs without a dense mask, exact against separate sequences and dense packing."""

from __future__ import annotations

import pytest
import torch

from inspo.conditioning import REFERENCE_SEQUENCES, InSPOConditioning, ReflectionTemplate, make_conditioning
from inspo.errors import ConfigError
from inspo.layout import PackedLayout
from inspo.logprobs import target_logps, token_logps
from inspo.prefix_attention import PrefixLayout, PrefixRows, prefix_attention_forward, register
from tests.helpers import assert_layout_exact, random_pairs, tiny_model

LENGTHS = [(5, 3, 4), (2, 1, 6), (7, 2, 2), (1, 1, 1), (9, 4, 3)]


def prefix_model(seed: int = 0) -> torch.nn.Module:
    model = tiny_model("sdpa", seed=seed)
    model.config._attn_implementation = register()  # prefix rows would switch it themselves (test_prefix_selection)
    return model


@pytest.mark.parametrize("budget", [None, 20, 40])
@pytest.mark.parametrize("conditioning", ["standard", "inspo", "inspo-template"])
def test_prefix_path_matches_separate_sequences(tokenizer, budget, conditioning):
    """Every policy and reference target equals the separately computed sequence to 1e-5 (fp32), with one pair per
    row and with several pairs per row (budgets 20 and 40 leave padding at the ends of rows)."""
    model, plain = prefix_model(), tiny_model("sdpa")  # same seed, same weights
    template = ReflectionTemplate("Other answer:", "\nBetter answer:") if conditioning.endswith("template") else None
    cond = make_conditioning(conditioning.split("-")[0], tokenizer, template)
    segments = [cond.segments(*p) for p in random_pairs(5, LENGTHS)]
    built = assert_layout_exact(PrefixLayout(budget), model, cond, segments, tokenizer.pad_token_id, plain, chunk_size=7)
    for rows in built:
        assert rows.attention_mask.dim() == 2  # no [T, T] mask anywhere
        if budget == 40 and template is None:  # template rows are longer than the budget: one pair each
            assert rows.input_ids.shape[0] < len(segments)


@pytest.mark.parametrize("conditioning", ["standard", "inspo"])
def test_prefix_gradients_equal_dense_packing(tokenizer, conditioning):
    """Backward: the gradient of every parameter equals the dense-mask packed path's (fp32, 1e-5 relative)."""
    cond = make_conditioning(conditioning, tokenizer)
    segments = [cond.segments(*p) for p in random_pairs(5, LENGTHS)]
    grads = []
    for layout, model in ((PackedLayout(30), tiny_model("sdpa")), (PrefixLayout(30), prefix_model())):
        rows = layout.build(segments, cond.sequences(plain=True), tokenizer.pad_token_id)
        logps = token_logps(model, rows)
        (logps * torch.linspace(-1, 1, logps.numel())).sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert ((grads[1] - grads[0]).norm() / grads[0].norm()).item() < 1e-5


def test_plan_of_one_inspo_and_one_standard_pair():
    """InSPO pair P=5, W=3, L=4 in row [x | y_l, y_w | y_w, y_l] (19 tokens): chain 1 is [x, y_l, y_w], 12 tokens
    attending causally (q=k=12, offsets 0..11); chain 2 is [y_w, y_l] (offsets 12..18, q=7) against
    [x ; chain 2] (k = 5 + 7 = 12, keys 0..4 and 12..18). Standard pair [x | y_w | y_l]: [x, y_w] causal
    (q=k=8), then y_l (offsets 8..11, q=4) against [x ; y_l] (k=9)."""
    inspo_sequences = InSPOConditioning.policy_sequences
    pair = {"x": [1] * 5, "y_w": [2] * 3, "y_l": [3] * 4, "before": [], "after": []}
    plan = PrefixLayout().build([pair], inspo_sequences, 0).plan
    shapes = {(g.q_len, g.k_len): g for g in plan.groups}
    assert set(shapes) == {(12, 12), (7, 12)}
    assert shapes[(12, 12)].query_index.tolist() == list(range(12))
    assert shapes[(7, 12)].query_index.tolist() == list(range(12, 19))
    assert shapes[(7, 12)].key_index.tolist() == [*range(5), *range(12, 19)]
    plan = PrefixLayout().build([pair], REFERENCE_SEQUENCES, 0).plan
    shapes = {(g.q_len, g.k_len): g for g in plan.groups}
    assert set(shapes) == {(8, 8), (4, 9)}
    assert shapes[(4, 9)].key_index.tolist() == [*range(5), *range(8, 12)]


def test_chains_of_equal_shape_are_one_call():
    """Three equal pairs in two rows (budget 30 fits two 12-token pairs): 2 groups of 3 chains, row offsets right."""
    pairs = [{"x": [1] * 5, "y_w": [2] * 3, "y_l": [3] * 4}] * 3
    rows = PrefixLayout(30).build(pairs, REFERENCE_SEQUENCES, 0)
    assert rows.input_ids.shape == (2, 24)
    groups = {(g.q_len, g.k_len): g for g in rows.plan.groups}
    assert {k: g.count for k, g in groups.items()} == {(8, 8): 3, (4, 9): 3}
    # pair 1 sits at offset 12 of row 0, pair 2 at offset 0 of row 1 (flat index 24)
    assert groups[(4, 9)].query_index.tolist() == [*range(8, 12), *range(20, 24), *range(32, 36)]
    assert groups[(4, 9)].key_index[9:18].tolist() == [*range(12, 17), *range(20, 24)]
    # every real token is some chain's query, once; the padding (row 1, offsets 12..23) is none
    assert sorted(rows.plan.query_index.tolist()) == list(range(36))


def test_prefix_rows_refuse_an_attention_they_cannot_wrap(tokenizer):
    """Prefix rows under flex_attention (or any implementation the path cannot stand in for) would attend across
    branches: a clear error instead; the attention function without a plan says what it needs."""
    rows = PrefixLayout().build([{"x": [1, 2], "y_w": [3], "y_l": [4]}], REFERENCE_SEQUENCES, 0)
    assert isinstance(rows, PrefixRows)
    model = tiny_model("sdpa")
    model.config._attn_implementation = "flex_attention"
    with pytest.raises(ConfigError, match="prefix layout need attention sdpa, eager or flash-attention"):
        target_logps(model, rows)
    q = torch.zeros(1, 2, 3, 4)
    with pytest.raises(ConfigError, match="PrefixLayout"):
        prefix_attention_forward(None, q, q, q, None)


@pytest.mark.parametrize(("ancestors", "own"), [(5, 7), (1, 1), (40, 3)])
def test_split_chain_attention_equals_the_lower_right_mask(ancestors, own):
    """The CPU path of a chain with ancestors (two flash calls merged by log-sum-exp, and their backward given the
    merged output) equals sdpa under the lower-right causal mask, outputs and gradients (fp64, GQA 4 -> 2 heads; the
    kernel's log-sum-exp is fp32 even for fp64 inputs, hence 1e-6 and not 1e-12)."""
    from torch.nn.attention.bias import causal_lower_right

    from inspo import prefix_kernels

    g = torch.Generator().manual_seed(0)
    q = torch.randn(3, 4, own, 8, generator=g, dtype=torch.float64, requires_grad=True)
    k, v = (torch.randn(3, 2, ancestors + own, 8, generator=g, dtype=torch.float64, requires_grad=True)
            for _ in range(2))
    weights = torch.randn(3, 4, own, 8, generator=g, dtype=torch.float64)
    got = prefix_kernels.chain_attention(q, k, v, window=None, dropout=0.0, scale=None)
    got_grads = torch.autograd.grad((got * weights).sum(), (q, k, v))
    rk, rv = (t.repeat_interleave(2, dim=1) for t in (k, v))
    want = torch.nn.functional.scaled_dot_product_attention(q, rk, rv, attn_mask=causal_lower_right(own, ancestors + own))
    want_grads = torch.autograd.grad((want * weights).sum(), (q, k, v))
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    for a, b in zip(got_grads, want_grads):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    assert got.grad_fn.name().startswith("SplitChainAttention")  # the split path ran, not the masked one
