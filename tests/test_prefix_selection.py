"""The prefix-attention path as the default of ``packed``: where it is chosen, that it stays exact on every model it
is chosen for (eager, sliding windows), that its registration leaves other models alone, and the start-up check."""

from __future__ import annotations

import copy

import pytest
import torch

from inspo.checks import check_exactness
from inspo.conditioning import REFERENCE_SEQUENCES, make_conditioning
from inspo.layout import PackedLayout, SeparateLayout
from inspo.logprobs import target_logps
from inspo.prefix_attention import PrefixLayout, choose_layout, prefix_unsupported_reason, use_prefix_attention
from tests.helpers import assert_layout_exact, random_pairs, tiny_family, tiny_model

LENGTHS = [(5, 3, 4), (2, 1, 6), (7, 2, 2), (9, 4, 3)]


def assert_exact(model: torch.nn.Module, plain: torch.nn.Module, tokenizer, conditioning: str, budget: int | None):
    """Both sequence sets of ``conditioning`` through prefix rows equal the separately computed sequences (1e-5)."""
    cond = make_conditioning(conditioning, tokenizer)
    segments = [cond.segments(*p) for p in random_pairs(4, LENGTHS)]
    assert_layout_exact(PrefixLayout(budget), model, cond, segments, tokenizer.pad_token_id, plain)


@pytest.mark.parametrize("conditioning", ["standard", "inspo"])
def test_eager_models_get_the_prefix_path_exactly(tokenizer, conditioning):
    """A model loaded with eager attention: prefix rows equal eager separate sequences, several pairs per row."""
    model = tiny_model("eager")
    assert type(choose_layout(PackedLayout(), model)) is PrefixLayout
    assert_exact(model, tiny_model("eager"), tokenizer, conditioning, budget=30)
    assert model.config._attn_implementation == "inspo_prefix_eager"


@pytest.mark.parametrize(("family", "overrides"), [
    ("MistralConfig", {"sliding_window": 4}),  # every layer windowed
    ("Qwen2Config", {"use_sliding_window": True, "sliding_window": 3, "max_window_layers": 2}),  # half of them
])
@pytest.mark.parametrize("conditioning", ["standard", "inspo"])
def test_sliding_window_models_get_the_prefix_path_exactly(tokenizer, family, overrides, conditioning):
    """Windows of 3-4 tokens, shorter than every chain: the band on a chain's keys reproduces transformers' own
    sliding-window mask (positions 0..k-1), and the dense-mask path, which would drop the window, is not chosen."""
    plain = tiny_family(family, **overrides)
    model = copy.deepcopy(plain)
    assert prefix_unsupported_reason(model) is None
    assert type(choose_layout(PackedLayout(), model)) is PrefixLayout
    assert_exact(model, plain, tokenizer, conditioning, budget=None)


def test_hybrid_and_softcapped_models_fall_back(caplog):
    """A recurrent layer (Jamba's Mamba) or soft-capped attention (Gemma-2) cannot be made exact by chains."""
    jamba = tiny_family("JambaConfig")
    assert "not masked full attention" in prefix_unsupported_reason(jamba)
    assert type(choose_layout(PackedLayout(), jamba)) is SeparateLayout
    gemma = tiny_family("Gemma2Config", head_dim=16)
    assert "soft-caps" in prefix_unsupported_reason(gemma)
    assert type(choose_layout(SeparateLayout(), tiny_model())) is SeparateLayout  # asked for separate: kept


def test_registration_does_not_leak_into_other_models(tokenizer):
    """After a model switched to ``inspo_prefix_sdpa``, transformers' own ``sdpa`` entry and a fresh model are
    untouched; the switched model, given ordinary rows or asked to generate from left-padded prompts, computes
    exactly what the plain model does (its base attention and masks run whenever no plan is given)."""
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    model, plain = tiny_model("sdpa"), tiny_model("sdpa")
    assert use_prefix_attention(model) == "inspo_prefix_sdpa"
    assert AttentionInterface._global_mapping["sdpa"] is sdpa_attention_forward
    assert tiny_model("sdpa").config._attn_implementation == "sdpa"
    segments = [make_conditioning("inspo", tokenizer).segments(*p) for p in random_pairs(4, LENGTHS)]
    rows = SeparateLayout().build(segments, REFERENCE_SEQUENCES, tokenizer.pad_token_id)
    with torch.no_grad():
        torch.testing.assert_close(target_logps(model, rows), target_logps(plain, rows), atol=0, rtol=0)
    prompts = torch.tensor([[0, 0, 5, 6, 7], [1, 2, 3, 4, 5]])
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    kwargs = {"attention_mask": mask, "max_new_tokens": 4, "do_sample": False, "pad_token_id": 0}
    torch.testing.assert_close(model.generate(prompts, **kwargs), plain.generate(prompts, **kwargs))
    assert model.config._attn_implementation == "inspo_prefix_sdpa"  # still switched after running its base


def test_start_up_check_covers_the_prefix_path(tokenizer):
    """``inspo.checks`` compares prefix rows with separate rows (the old check skipped layouts without a 4D mask)."""
    model = tiny_model("sdpa")
    cond = make_conditioning("inspo", tokenizer)
    segments = cond.segments(*random_pairs(1, LENGTHS)[0])
    result = check_exactness(model, lambda rows, full: target_logps(model, rows, full_logits=full), segments,
                             cond.sequences(plain=True), PrefixLayout(), tokenizer.pad_token_id, torch.float32)
    assert result.packed_gap is not None and result.packed_gap <= 1e-5 and result.packed_exact


def test_prefix_path_under_bf16_autocast(tokenizer):
    """bf16-mixed training (fp32 weights, CPU autocast): transformers hands the attention fp32 queries and keys but
    bf16 values; the prefix path casts as autocast would (the old code raised a dtype error) and stays within bf16
    rounding of separate rows (0.05 nats per token, inspo.checks' bf16 tolerance)."""
    from inspo.checks import TOLERANCE

    cond = make_conditioning("inspo", tokenizer)
    segments = [cond.segments(*p) for p in random_pairs(4, LENGTHS)]
    sequences = cond.sequences(plain=True)
    model = tiny_model("sdpa")
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        got = target_logps(model, PrefixLayout(30).build(segments, sequences, tokenizer.pad_token_id))
        want = target_logps(model, SeparateLayout().build(segments, sequences, tokenizer.pad_token_id))
    tokens = sum(len(segments[0][k[-1]]) for k in sequences.values())
    assert got.dtype == torch.float32
    assert (got[0] - want[0]).abs().sum().item() / tokens <= TOLERANCE[torch.bfloat16]
