"""Token log-probabilities at target positions only, chunked, accumulated in fp32.

A causal LM's full output is [tokens x vocab] logits; for SmolLM2 (49k vocab) that is 200 KB per token in fp32,
more than the rest of the step. Only target tokens need a distribution, so we run the model body, gather the
hidden states that predict targets, and apply the output projection + log-softmax to those rows, ``chunk_size``
at a time. Under autograd, when keeping every chunk's fp32 log-softmax for backward would take more than
``keep_bytes`` (default :data:`KEEP_LOGITS_BYTES`), each chunk is checkpointed (recomputed in backward), so at most
one chunk of [chunk_size x vocab] fp32 logits is alive at a time; below it nothing is recomputed (the recomputation
is 1/4 of the head's FLOPs: ~5% of a standard DPO step of SmolLM2-135M at 128-token responses). The log-softmax is
always computed in fp32, also for bf16 models, because the normaliser of a 50k-way softmax loses ~2 digits in bf16.

Bypassing ``model.forward`` is exact only if :func:`_postprocess_logits` applies the family's logit transforms:
``inspo.checks`` compares the two paths on the first batch of every model and switches a model that differs to
``target_logps(..., full_logits=True)``, which reads ``model(...).logits``.

``log_sum_sq=True`` (WPO weighting, ``inspo.loss_options``) adds a second reduction over the vocabulary per target
token, log sum_v pi(v | context)^2, in the same chunk as the log-softmax (fp32, no gradient: WPO's weights are
constants). Off by default, and then the computation is the one without the option, op for op.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from inspo.layout import ModelRows, to_block_mask
from inspo.lean import linear_grads

KEEP_LOGITS_BYTES = 256 * 2**20
"""Most bytes of [targets x vocab] fp32 log-softmax kept for backward instead of recomputed (:func:`token_logps`)."""


def _model_kwargs(model: nn.Module, rows: ModelRows) -> dict[str, Tensor]:
    if hasattr(rows, "model_inputs"):  # rows that bring their own inputs (inspo.prefix_attention: no dense mask)
        return rows.model_inputs(model)
    mask = rows.attention_mask
    impl = getattr(model.config, "_attn_implementation", "sdpa")
    if mask.dim() == 4 and impl == "flex_attention":
        mask = to_block_mask(mask)  # flex_attention reads a BlockMask; a tensor would be added to the scores
    elif mask.dim() == 4 and impl == "eager":
        # eager attention adds the mask to the scores: it needs an additive float mask, not a boolean one.
        dtype = next(model.parameters()).dtype
        mask = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)
    return {"input_ids": rows.input_ids, "attention_mask": mask, "position_ids": rows.position_ids}


def _postprocess_logits(model: nn.Module, logits: Tensor) -> Tensor:
    """Apply the model family's own logit transforms (Gemma-2 soft-capping, Cohere/Granite/HyperCLOVAX scaling,
    Falcon-H1's multiplier) in fp32. Families not listed here are caught by the start-up check (``inspo.checks``).
    """
    config = model.config
    logits = logits.float()
    if getattr(config, "logit_scale", None):
        logits = logits * config.logit_scale
    if getattr(config, "logits_scaling", None):
        # Granite divides by it; HyperCLOVAX (muP) multiplies by it.
        scale = config.logits_scaling
        logits = logits * scale if getattr(config, "model_type", None) == "hyperclovax" else logits / scale
    if getattr(config, "lm_head_multiplier", None):
        logits = logits * config.lm_head_multiplier
    if getattr(config, "final_logit_softcapping", None):
        cap = config.final_logit_softcapping
        logits = torch.tanh(logits / cap) * cap
    return logits


class TargetLogSoftmax(torch.autograd.Function):
    """``logits.log_softmax(-1)`` at ``labels`` ([n, V] -> [n]). Its backward, ``g * (onehot - softmax)``, writes one
    [n, V] buffer, where gather's backward and log-softmax's write two (the step's peak memory: the head's backward
    runs first, while every activation is still kept)."""

    @staticmethod
    def forward(ctx: Any, logits: Tensor, labels: Tensor) -> Tensor:
        logps = logits.log_softmax(-1)
        ctx.save_for_backward(logps, labels)
        return logps.gather(-1, labels.unsqueeze(-1)).squeeze(-1)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        logps, labels = ctx.saved_tensors
        grad = grad.unsqueeze(-1)
        return logps.exp().mul_(-grad).scatter_add_(-1, labels.unsqueeze(-1), grad), None


class HeadLogits(torch.autograd.Function):
    """``hidden @ weight.T + bias``, whose weight gradient is a fresh contiguous tensor. With tied embeddings the
    embedding's gradient then accumulates into it in place; autograd's own (a transposed view) was added out of
    place, one more [vocab x hidden] buffer (108 MiB for SmolLM2) at the end of backward: the step's peak on CPU."""

    @staticmethod
    def forward(ctx: Any, hidden: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        out = F.linear(hidden, weight, bias)
        ctx.save_for_backward(hidden, weight)
        ctx.compute_dtype, ctx.has_bias = out.dtype, bias is not None  # autocast: the product ran in bf16
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        hidden, weight = ctx.saved_tensors
        return linear_grads(ctx, grad, hidden, hidden.dtype, weight, ctx.needs_input_grad)


def _project(head: nn.Module, hidden: Tensor) -> Tensor:
    """The output projection of [n, hidden] rows: :class:`HeadLogits` for a plain ``nn.Linear`` under autograd."""
    if type(head) is nn.Linear and torch.is_grad_enabled():  # exactly: LoRA / quantised heads compute otherwise
        return HeadLogits.apply(hidden, head.weight, head.bias)
    return head(hidden)


def _chunk_logps(head: nn.Module, model: nn.Module, hidden: Tensor, labels: Tensor) -> Tensor:
    return TargetLogSoftmax.apply(_postprocess_logits(model, _project(head, hidden)), labels)


def _with_log_sum_sq(logps: Tensor, labels: Tensor) -> Tensor:
    """[n, 2]: the target log-prob and log sum_v p_v^2 = logsumexp_v(2 log p_v) of each row of ``logps`` [n, V].

    The second column is detached: WPO (arXiv 2406.11827, eq. 2) weights pairs by constants, as TRL 1.16 does.
    """
    target = logps.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    return torch.stack([target, (2 * logps.detach()).logsumexp(-1)], -1)


def _chunk_logps_sq(head: nn.Module, model: nn.Module, hidden: Tensor, labels: Tensor) -> Tensor:
    return _with_log_sum_sq(_postprocess_logits(model, _project(head, hidden)).log_softmax(-1), labels)


def token_logps(model: nn.Module, rows: ModelRows, chunk_size: int = 1024, log_sum_sq: bool = False,
                keep_bytes: int = KEEP_LOGITS_BYTES) -> Tensor:
    """Log-prob of every target token of ``rows`` (shape [N], fp32), without full-vocabulary logits per row.

    Args:
        model: a Hugging Face causal LM (``get_decoder()`` and ``get_output_embeddings()`` are used).
        rows: the batch built by a layout.
        chunk_size: target tokens per output-projection chunk.
        log_sum_sq: return [N, 2]: each token's log-prob and log sum_v pi(v | context)^2 (WPO; no gradient).
        keep_bytes: under autograd, recompute the chunks' logits in backward unless all N targets' fp32
            log-softmax fits in this many bytes (a head of unknown width is always recomputed).
    """
    chunk_fn = _chunk_logps_sq if log_sum_sq else _chunk_logps
    body, head = model.get_decoder(), model.get_output_embeddings()
    hidden = body(**_model_kwargs(model, rows), use_cache=False).last_hidden_state
    hidden = hidden.reshape(-1, hidden.shape[-1]).index_select(0, rows.pred_index)
    vocab = getattr(head, "out_features", None)
    recompute = torch.is_grad_enabled() and hidden.requires_grad and (
        vocab is None or hidden.shape[0] * vocab * 4 > keep_bytes)
    out = []
    for start in range(0, hidden.shape[0], chunk_size):
        h, y = hidden[start : start + chunk_size], rows.labels[start : start + chunk_size]
        if recompute:
            out.append(checkpoint(chunk_fn, head, model, h, y, use_reentrant=False))
        else:
            out.append(chunk_fn(head, model, h, y))
    return torch.cat(out) if out else hidden.new_zeros((0, 2) if log_sum_sq else 0, dtype=torch.float32)


def token_logps_full(model: nn.Module, rows: ModelRows, log_sum_sq: bool = False) -> Tensor:
    """Reference implementation: full-vocabulary logits from ``model(...)``, then the same gather. For checks."""
    logits = model(**_model_kwargs(model, rows), use_cache=False).logits.float()
    logits = logits.reshape(-1, logits.shape[-1]).index_select(0, rows.pred_index)
    if log_sum_sq:
        return _with_log_sum_sq(F.log_softmax(logits, -1), rows.labels)
    return F.log_softmax(logits, -1).gather(-1, rows.labels.unsqueeze(-1)).squeeze(-1)


def target_logps(model: nn.Module, rows: ModelRows, chunk_size: int = 1024, full_logits: bool = False,
                 log_sum_sq: bool = False) -> Tensor:
    """Summed log-prob of every target, as a [num_pairs, len(rows.names)] fp32 tensor.

    ``full_logits``: through ``model(...).logits`` (:func:`token_logps_full`) instead of the chunked output head,
    for models whose forward transforms logits in a way :func:`_postprocess_logits` does not (``inspo.checks``).
    ``log_sum_sq``: [num_pairs, 2 * len(rows.names)]: the summed log-probs, then per target the sum over its tokens
    of log sum_v pi(v | context)^2 (WPO's normaliser; no gradient).
    """
    if log_sum_sq:
        logps = token_logps_full(model, rows, True) if full_logits else token_logps(model, rows, chunk_size, True)
        sums = logps.new_zeros(rows.num_slots, 2).index_add(0, rows.slot, logps)
        return torch.cat([sums[:, 0].view(rows.num_pairs, -1), sums[:, 1].view(rows.num_pairs, -1)], 1)
    logps = token_logps_full(model, rows) if full_logits else token_logps(model, rows, chunk_size)
    sums = logps.new_zeros(rows.num_slots).index_add(0, rows.slot, logps)
    return sums.view(rows.num_pairs, len(rows.names))
