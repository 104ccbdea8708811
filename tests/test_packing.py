"""Several pairs per packed row, the flex_attention BlockMask, and the automatic fallback to ``separate``."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from inspo.conditioning import REFERENCE_SEQUENCES, make_conditioning
from inspo.errors import ConfigError
from inspo.layout import PackedLayout, packed_unsupported_reason, to_block_mask
from inspo.logprobs import target_logps
from tests.helpers import TINY_CONFIG, expected, random_pairs, tiny_model

LENGTHS = [(5, 3, 4), (2, 1, 6), (7, 2, 2), (1, 1, 1), (9, 4, 3)]


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("budget", [20, 40, 10_000])
@pytest.mark.parametrize("conditioning", ["standard", "inspo"])
def test_several_pairs_per_row_match_separate_sequences(tokenizer, attn, budget, conditioning):
    """Block-diagonal rows (with padding between rows of different fill) give the separate log-probs to 1e-5."""
    model = tiny_model(attn)
    cond = make_conditioning(conditioning, tokenizer)
    segments = [cond.segments(*p) for p in random_pairs(5, LENGTHS)]
    for sequences in (cond.sequences(plain=True), REFERENCE_SEQUENCES):
        rows = PackedLayout(budget).build(segments, sequences, tokenizer.pad_token_id)
        assert rows.input_ids.shape[0] < len(segments)  # several pairs do share a row
        with torch.no_grad():
            got = target_logps(model, rows, chunk_size=7)
        want = torch.tensor([expected(model, s, sequences) for s in segments])
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_budget_packs_first_fit_and_isolates_pairs():
    """Pairs of 6, 6 and 3 tokens under a budget of 10: rows [pair 0, pair 2] and [pair 1]; no cross-pair attention."""
    pairs = [{"x": [1] * 2, "y_w": [2] * 2, "y_l": [3] * 2}, {"x": [4] * 2, "y_w": [5] * 2, "y_l": [6] * 2},
             {"x": [7], "y_w": [8], "y_l": [9]}]
    rows = PackedLayout(max_tokens_per_row=10).build(pairs, REFERENCE_SEQUENCES, 0)
    assert rows.input_ids.tolist() == [[1, 1, 2, 2, 3, 3, 7, 8, 9], [4, 4, 5, 5, 6, 6, 0, 0, 0]]
    assert rows.position_ids[0].tolist() == [0, 1, 2, 3, 2, 3, 0, 1, 1]  # positions restart for every pair
    mask = rows.attention_mask[0, 0]
    assert not mask[6:, :6].any() and not mask[:6, 6:].any()
    assert mask[8, 6] and not mask[8, 7]  # pair 2's y_l sees its prompt, not its y_w
    with pytest.raises(ConfigError, match=r"^layout.max_tokens_per_row must be >= 1 or None, got 0$"):
        PackedLayout(max_tokens_per_row=0)


def test_flex_block_mask_equals_the_dense_mask(tokenizer):
    """flex_attention (eager, CPU) under our BlockMask equals sdpa under the dense 4D mask.

    The whole model under ``attn_implementation="flex_attention"`` also matches (checked by hand: transformers
    compiles flex_attention, ~50 s on a cold CPU compile cache, too slow for this suite).
    """
    from torch.nn.attention.flex_attention import flex_attention

    cond = make_conditioning("inspo", tokenizer)
    segments = [cond.segments(*p) for p in random_pairs(5, LENGTHS)]
    rows = PackedLayout(40).build(segments, cond.policy_sequences, 0)
    mask = rows.attention_mask
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(mask.shape[0], 2, mask.shape[-1], 8, generator=g) for _ in range(3))
    got = flex_attention(q, k, v, block_mask=to_block_mask(mask, block_size=16))
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_packed_unsupported_reason():
    assert packed_unsupported_reason(SimpleNamespace(_attn_implementation="sdpa")) is None
    assert packed_unsupported_reason(SimpleNamespace(_attn_implementation="flex_attention")) is None
    assert "flash_attention_2" in packed_unsupported_reason(SimpleNamespace(_attn_implementation="flash_attention_2"))
    assert "sliding-window" in packed_unsupported_reason(SimpleNamespace(_attn_implementation="sdpa",
                                                                         sliding_window=4096))
    qwen_like = SimpleNamespace(_attn_implementation="sdpa", sliding_window=4096, use_sliding_window=False)
    assert packed_unsupported_reason(qwen_like) is None


@pytest.mark.parametrize(("impl", "window", "want"), [
    ("flash_attention_2", None, "PrefixLayout"),  # prefix attention: flash-attention gets prefix sharing now
    ("flex_attention", None, "PackedLayout"),  # flex keeps its BlockMask over the dense mask, said in one line
    ("flex_attention", 4096, "SeparateLayout"),  # a dense mask would drop the window: separate, said in one line
])
def test_module_picks_the_packed_path_or_falls_back_with_one_log_line(monkeypatch, caplog, impl, window, want):
    """The packed layout uses prefix attention where it is exact; else the dense mask where that is, else separate."""
    import inspo.module as module_file
    from inspo.module import PreferenceModule

    load = module_file.load_causal_lm

    def load_as(*args, **kwargs):
        model = load(*args, **kwargs)
        model.config._attn_implementation = impl  # as loaded with flash-attn installed, or asked for flex
        model.config.sliding_window = window
        return model

    monkeypatch.setattr(module_file, "load_causal_lm", load_as)
    module = PreferenceModule(random_init=TINY_CONFIG)  # packed is the default
    assert module.layout.name == "packed"
    with caplog.at_level(logging.INFO, logger="inspo"):
        module.configure_model()
    assert type(module.layout).__name__ == want
    lines = [r.getMessage() for r in caplog.records if "layout" in r.getMessage() or "prefix" in r.getMessage()]
    assert len(lines) == (want != "PrefixLayout"), lines
    if lines:
        assert impl in lines[0] and ("separate" in lines[0]) == (want == "SeparateLayout")


def test_a_checkpoint_saved_with_the_old_max_tokens_per_row_still_loads(tmp_path):
    """Checkpoints written before the budget moved into the layout hold ``layout: packed, max_tokens_per_row: N``:
    they load (the old key is dropped: packing only removes padding, the log-probs are the same) and resume."""
    import lightning

    from inspo.module import PreferenceModule

    module = PreferenceModule(random_init=TINY_CONFIG, export_dir=None)
    module.configure_model()
    saved = {**module.hparams, "layout": "packed", "max_tokens_per_row": 64}
    path = tmp_path / "old.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": saved,
                "pytorch-lightning_version": lightning.__version__}, path)
    loaded = PreferenceModule.load_from_checkpoint(path)
    assert isinstance(loaded.layout, PackedLayout) and loaded.policy is not None  # prefix attention here
    PreferenceModule(random_init=TINY_CONFIG, layout=PackedLayout(64)).check_resumable({"hyper_parameters": saved})
