"""Batched generation from pi(y | x) with left padding: the one generation helper of inspo.

Used by ``inspo eval`` (and its suite), the data generator (``scripts/make_verifiable_prefs.py``) and the sample
tables shown during training (:class:`inspo.callbacks.SampleGenerations`). Only the prompt is shown to the model:
InSPO's alternative response exists in training alone, so evaluation generates exactly as any deployed model would.
Prompts are rendered with the tokenizer's chat template (one user turn and the generation prompt; plain text for a
tokenizer without one), left-padded so every row's last prompt token sits at the same position, and answered in one
``generate`` call per batch. A response ends at the first end-of-turn (EOS) token; one that never produced it within
``max_new_tokens`` is marked ``truncated`` (the gold reward's "runaway" tie-break).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from inspo.errors import ConfigError


@dataclass
class Generation:
    """One generated response.

    Attributes:
        text: the decoded response, special tokens removed.
        tokens: number of generated tokens before the first EOS (the EOS itself not counted).
        truncated: the response hit ``max_new_tokens`` without an EOS.
    """

    text: str
    tokens: int
    truncated: bool


def require_chat_template(tokenizer: PreTrainedTokenizerBase, name: str) -> None:
    """Raise :class:`ConfigError` if ``tokenizer`` has no chat template (instruction prompts need one)."""
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError(f"the tokenizer of {name!r} has no chat template: the benchmark's prompts are user turns "
                          "of a chat and need an instruction-tuned model whose tokenizer_config.json has "
                          "'chat_template'")


def encode_prompts(tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str]) -> list[list[int]]:
    """Token ids of each prompt as one user turn plus the assistant generation prompt; the plain tokenized text when
    the tokenizer has no chat template (a base model's samples during training; ``inspo eval`` refuses such a
    tokenizer first, see :func:`require_chat_template`)."""
    if not getattr(tokenizer, "chat_template", None):
        return [list(tokenizer(prompt).input_ids) for prompt in prompts]
    out = []
    for prompt in prompts:
        ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                            tokenize=True, return_dict=False)
        out.append(list(ids))
    return out


def left_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), each [B, T], with every row right-aligned (padding on the left)."""
    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        if row:
            ids[i, width - len(row):] = torch.tensor(row, dtype=torch.long)
            mask[i, width - len(row):] = 1
    return ids, mask


def _eos_ids(model: nn.Module, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    ids = {tokenizer.eos_token_id}
    config = getattr(model, "generation_config", None)
    extra = getattr(config, "eos_token_id", None) if config is not None else None
    ids.update(extra if isinstance(extra, (list, tuple)) else [extra])
    return sorted(i for i in ids if i is not None)


# no_grad, not inference_mode: the samples callback generates from the policy mid-training, and a buffer a model
# rebuilds while generating (dynamic RoPE's inv_freq) would become an inference tensor that backward cannot save.
@torch.no_grad()
def generate(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    max_new_tokens: int = 96,
    num_samples: int = 1,
    temperature: float = 0.0,
    top_p: float = 1.0,
    batch_size: int = 16,
) -> list[list[Generation]]:
    """Answer every prompt ``num_samples`` times; returns one list of generations per prompt.

    Args:
        model: a causal LM (in eval mode while it generates; its training mode is restored afterwards, so that
            the samples callback can generate from the policy in the middle of training).
        tokenizer: its tokenizer (its chat template, if any, renders each prompt: :func:`encode_prompts`).
        prompts: user messages.
        max_new_tokens: length cap of each response.
        num_samples: responses per prompt (with temperature 0 they are all the same greedy answer).
        temperature: 0 for greedy decoding, otherwise the sampling temperature.
        top_p: nucleus sampling mass (sampling only).
        batch_size: prompts per ``generate`` call (each brings ``num_samples`` rows).
    """
    if max_new_tokens < 1 or num_samples < 1 or batch_size < 1:
        raise ConfigError("max_new_tokens, num_samples and batch_size must be at least 1")
    if temperature < 0:
        raise ConfigError(f"temperature must be >= 0, got {temperature}")
    was_training = model.training
    model.eval()
    try:
        return _generate(model, tokenizer, prompts, max_new_tokens, num_samples, temperature, top_p, batch_size)
    finally:
        model.train(was_training)


def _generate(model: nn.Module, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], max_new_tokens: int,
              num_samples: int, temperature: float, top_p: float, batch_size: int) -> list[list[Generation]]:
    device = next(model.parameters()).device
    eos = _eos_ids(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
    sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": 0} if temperature > 0 else {
        "do_sample": False, "temperature": None, "top_p": None, "top_k": None}
    encoded = encode_prompts(tokenizer, prompts)
    results: list[list[Generation]] = []
    for start in range(0, len(encoded), batch_size):
        chunk = encoded[start:start + batch_size]
        input_ids, mask = left_pad(chunk, pad)
        out = model.generate(input_ids=input_ids.to(device), attention_mask=mask.to(device),
                             max_new_tokens=max_new_tokens, num_return_sequences=num_samples, pad_token_id=pad,
                             eos_token_id=eos, **sampling)
        new = out[:, input_ids.shape[1]:].tolist()
        for i in range(len(chunk)):
            results.append([_decode(tokenizer, new[i * num_samples + j], eos, max_new_tokens)
                            for j in range(num_samples)])
    return results


def _decode(tokenizer: PreTrainedTokenizerBase, ids: list[int], eos: list[int], max_new_tokens: int) -> Generation:
    end = next((k for k, token in enumerate(ids) if token in eos), None)
    kept = ids if end is None else ids[:end]
    truncated = end is None and len(ids) >= max_new_tokens
    return Generation(tokenizer.decode(kept, skip_special_tokens=True).strip(), len(kept), truncated)
