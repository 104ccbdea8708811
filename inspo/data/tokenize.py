"""Token ids of a preference pair: the numerics contract of the whole framework.

Rules (each one has a test in ``tests/test_data.py``):

1. Chat template applied once. With a template, ``prompt_text`` is the rendered conversation with the generation
   prompt, and a response's text is what the template adds after it when the assistant turn is appended
   (``"answer<|im_end|>\\n"`` for ChatML), so the end-of-turn token is part of the response. A template that does
   not render the prompt as a prefix of the full conversation is rejected. Without a template, the response is
   followed by ``eos_token_id``.
2. Prompt and responses are tokenised separately (``add_special_tokens=False``): a token never straddles the
   prompt/response boundary, so log pi(y|x) is the same sum whichever response x is paired with, and
   ``prompt + chosen`` and ``prompt + rejected`` share the prompt ids exactly.
3. Exactly one BOS: prepended only if the tokenizer adds one by default and the rendered prompt lacks it.
4. Every response keeps its EOS / end-of-turn token as a target. Padding never decides anything here (pad may
   equal eos, as in SmolLM2).

Truncation keeps the longest conditioned sequence, ``[x, y_alt, y_target]`` of length P + W + L (the InSPO
packed row conditions one response on the other), within ``max_length``; see :func:`truncate_pair`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from jinja2 import TemplateError
from transformers import PreTrainedTokenizerBase

from inspo.data.formats import PreferenceRecord
from inspo.errors import ConfigError, DataError


@dataclass
class TokenizedPair:
    """Token ids of one preference pair; ``prompt + chosen`` is the full chosen sequence.

    Attributes:
        prompt: ids of x (with the single BOS, if the tokenizer uses one, and the rendered chat template).
        chosen: ids of y_w, ending with its EOS / end-of-turn token (unless truncated).
        rejected: ids of y_l, ending with its EOS / end-of-turn token (unless truncated).
        row: 1-based row number in the source.
    """

    prompt: list[int]
    chosen: list[int]
    rejected: list[int]
    row: int

    @property
    def longest(self) -> int:
        """P + W + L: the length of the longest conditioned sequence [x, y_alt, y_target]."""
        return len(self.prompt) + len(self.chosen) + len(self.rejected)


def adds_bos(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether plain tokenisation (``add_special_tokens=True``) starts with a real BOS token."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return False
    ids = tokenizer("a").input_ids
    return bool(ids) and ids[0] == bos


def has_chat_template(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether the tokenizer carries a chat template."""
    return bool(getattr(tokenizer, "chat_template", None))


def tokenize_record(
    record: PreferenceRecord,
    tokenizer: PreTrainedTokenizerBase,
    chat_template: bool,
    *,
    add_bos: bool | None = None,
) -> TokenizedPair:
    """Tokenise a record into prompt and response ids (before truncation), following the module rules.

    Args:
        record: the validated record.
        tokenizer: the policy's tokenizer.
        chat_template: render prompts with the tokenizer's chat template when it has one. Conversational prompts
            (message lists) always need one.
        add_bos: whether the tokenizer adds a BOS by default; ``None`` detects it with :func:`adds_bos`. Pass it
            when tokenising many records to skip the check.

    Raises:
        DataError: a conversational row without a usable chat template, a template that does not extend the
            prompt, or a tokenizer without an EOS token for plain-text rows.
    """
    where = f"{record.source}: row {record.row}"
    if chat_template and has_chat_template(tokenizer):
        prompt_text, responses = _render_with_template(record, tokenizer, where)
        prompt = _encode(tokenizer, prompt_text)
        chosen, rejected = (_encode(tokenizer, text) for text in responses)
    else:
        if record.is_conversational:
            reason = "data.read.chat_template is false" if not chat_template else "the tokenizer has no chat template"
            raise DataError(f"{where}: the prompt is a list of chat messages, which needs a chat template, "
                            f"but {reason}")
        eos = tokenizer.eos_token_id
        if eos is None:
            raise DataError(f"{where}: plain-text rows end each response with EOS, but the tokenizer has none")
        prompt = _encode(tokenizer, record.prompt)
        chosen = _encode(tokenizer, record.chosen) + [eos]
        rejected = _encode(tokenizer, record.rejected) + [eos]
    if add_bos is None:
        add_bos = adds_bos(tokenizer)
    bos = tokenizer.bos_token_id
    if add_bos and bos is not None and prompt[:1] != [bos]:
        prompt = [bos] + prompt
    if not prompt:
        raise DataError(f"{where}: the prompt has no tokens")
    return TokenizedPair(prompt=prompt, chosen=chosen, rejected=rejected, row=record.row)


def _encode(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False).input_ids)


def _render(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]], where: str, **kwargs: Any) -> str:
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False, **kwargs)
    except (TemplateError, ValueError, TypeError) as err:  # templates call raise_exception() on e.g. bad roles
        raise DataError(f"{where}: the chat template cannot render this conversation: {err}") from None
    if not isinstance(text, str):
        raise DataError(f"{where}: the chat template rendered {type(text).__name__}, expected text")
    return text


def _render_with_template(
    record: PreferenceRecord, tokenizer: PreTrainedTokenizerBase, where: str
) -> tuple[str, tuple[str, str]]:
    """Return prompt_text and the two response texts, each the suffix the template adds to prompt_text."""
    messages = [{"role": "user", "content": record.prompt}] if isinstance(record.prompt, str) else record.prompt
    prompt_text = _render(tokenizer, messages, where, add_generation_prompt=True)
    responses = []
    for name, response in (("chosen", record.chosen), ("rejected", record.rejected)):
        full_text = _render(tokenizer, [*messages, {"role": "assistant", "content": response}], where)
        if not full_text.startswith(prompt_text):
            raise DataError(
                f"{where}: the chat template does not extend the prompt: the conversation with the {name} answer "
                f"does not start with the prompt rendered with add_generation_prompt=True, so the response tokens "
                f"cannot be separated from the prompt (set data.read.chat_template=false or fix the template)"
            )
        response_text = full_text[len(prompt_text):]
        if not response_text.strip():
            raise DataError(f"{where}: the chat template renders the {name} answer as empty text")
        responses.append(response_text)
    return prompt_text, (responses[0], responses[1])


def check_lengths(max_length: int, max_prompt_length: int) -> None:
    """Validate the truncation budget: 1 <= max_prompt_length <= max_length - 2.

    Raises:
        ConfigError: when the prompt budget leaves fewer than one token for each response.
    """
    if max_prompt_length < 1:
        raise ConfigError(f"data.read.max_prompt_length must be at least 1, got {max_prompt_length}")
    if max_prompt_length > max_length - 2:
        raise ConfigError(
            f"data.read.max_prompt_length ({max_prompt_length}) must be at most data.read.max_length - 2 "
            f"({max_length - 2}): each response needs at least one token"
        )


def truncate_pair(
    pair: TokenizedPair,
    max_length: int,
    max_prompt_length: int,
    *,
    bos_token_id: int | None = None,
) -> TokenizedPair | None:
    """Fit a pair into ``P + W + L <= max_length``; the pair itself when it already fits.

    The prompt is cut from the left first, but not below ``min(P, max_prompt_length)``:
    ``new_P = min(P, max(max_length - W - L, max_prompt_length))``. If the responses still exceed
    ``R = max_length - new_P``, they are cut from the right, the longer one first:
    ``w = min(W, max(R - L, R // 2))`` and ``l = min(L, R - w)``, so neither is left empty.

    Args:
        pair: the tokenised pair.
        max_length: the budget for P + W + L.
        max_prompt_length: the prompt is never cut below this many tokens (or its full length, if shorter).
        bos_token_id: if given and the prompt starts with it, a left cut keeps this BOS as the first token.

    Returns:
        The (possibly) truncated pair, or ``None`` when fewer than two response tokens would remain (the caller
        counts it as dropped).

    Raises:
        ConfigError: see :func:`check_lengths`.
    """
    check_lengths(max_length, max_prompt_length)
    prompt, chosen, rejected = pair.prompt, pair.chosen, pair.rejected
    n_prompt, n_chosen, n_rejected = len(prompt), len(chosen), len(rejected)  # P, W, L
    if n_prompt + n_chosen + n_rejected <= max_length:
        return pair
    new_prompt = min(n_prompt, max(max_length - n_chosen - n_rejected, max_prompt_length))
    budget = max_length - new_prompt  # R
    if budget < 2:
        return None
    if new_prompt < n_prompt:
        keep_bos = bos_token_id is not None and prompt[0] == bos_token_id and new_prompt >= 2
        cut = n_prompt - new_prompt
        prompt = [prompt[0], *prompt[cut + 1:]] if keep_bos else prompt[cut:]
    if n_chosen + n_rejected > budget:
        keep_chosen = min(n_chosen, max(budget - n_rejected, budget // 2))
        keep_rejected = min(n_rejected, budget - keep_chosen)
        chosen, rejected = chosen[:keep_chosen], rejected[:keep_rejected]
    return TokenizedPair(prompt=list(prompt), chosen=list(chosen), rejected=list(rejected), row=pair.row)
