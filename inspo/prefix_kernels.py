"""Attention of one group of chains (``inspo.prefix_attention``): queries = the chains, keys = [ancestors ; chains].

A chain's query i sees every ancestor key and its own keys 0..i: causal attention aligned to the lower right.
Three ways to compute it, all exact:

- no ancestors: plain causal sdpa (``is_causal``), which every kernel runs skipping the upper triangle;
- on CPU: the chain's attention is split in two flash calls that each compute only needed tiles, the ancestors
  (all keys, no mask) and the chain itself (causal), merged by their log-sum-exp (:class:`SplitChainAttention`).
  The CPU flash kernel cannot skip tiles of an explicit mask: with the lower-right mask it would compute every
  (query, key) pair, also the upper triangle of the chain's own keys (1/4 of the chain's work when P = W + L);
- elsewhere (CUDA, dropout, a sliding window): sdpa with torch's lower-right causal bias, which CUDA's kernels
  run skipping masked tiles, or with a banded mask for a sliding window.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.attention.bias import causal_lower_right


def window_mask(q_len: int, k_len: int, window: int, device: torch.device) -> Tensor:
    """[q_len, k_len] bool: query i (key position k_len - q_len + i) sees keys j with pos - window < j <= pos."""
    position = torch.arange(k_len - q_len, k_len, device=device).unsqueeze(1)
    keys = torch.arange(k_len, device=device)
    return (keys <= position) & (keys > position - window)


def chain_attention(q: Tensor, k: Tensor, v: Tensor, window: int | None, dropout: float,
                    scale: float | None) -> Tensor:
    """Attention of ``q`` [N, H, q_len, D] over ``k``, ``v`` [N, Hkv, k_len, D] (the last q_len keys are the chains
    themselves), lower-right causal, optionally within a sliding ``window``; returns [N, H, q_len, D]."""
    heads, kv_heads, q_len, k_len = q.shape[1], k.shape[1], q.shape[2], k.shape[2]
    banded = window is not None and window < k_len
    if q_len == k_len and not banded:  # no ancestors: plain causal attention, GQA handled by the kernel
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout, scale=scale,
                                              enable_gqa=kv_heads != heads)
    if q.device.type == "cpu" and dropout == 0.0 and not banded:
        a = k_len - q_len
        return SplitChainAttention.apply(q, k[:, :, :a], v[:, :, :a], k[:, :, a:], v[:, :, a:], scale)
    # The lower-right bias and the CPU flash kernel do not take enable_gqa on every path: repeat the kv heads.
    k, v = (repeat_kv(t, heads) for t in (k, v))
    if banded:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=window_mask(q_len, k_len, window, q.device),
                                              dropout_p=dropout, scale=scale)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=causal_lower_right(q_len, k_len), dropout_p=dropout,
                                          scale=scale)


def repeat_kv(t: Tensor, heads: int) -> Tensor:
    """[N, Hkv, k, D] -> [N, heads, k, D]: query head h reads kv head h // (heads / Hkv), as grouped-query attention."""
    return t if t.shape[1] == heads else t.repeat_interleave(heads // t.shape[1], dim=1)


def sum_kv_groups(grad: Tensor, kv_heads: int) -> Tensor:
    """The inverse of :func:`repeat_kv` for gradients: [N, heads, k, D] -> [N, kv_heads, k, D], summed per group."""
    n, heads, k, d = grad.shape
    return grad if heads == kv_heads else grad.view(n, kv_heads, heads // kv_heads, k, d).sum(2)


class SplitChainAttention(torch.autograd.Function):
    """Attention over [ancestors ; own keys] as two CPU flash calls merged by log-sum-exp, with its exact backward.

    Forward: ``o_a, l_a`` over the ancestors (no mask), ``o_c, l_c`` over the chain's own keys (causal);
    ``l = logaddexp(l_a, l_c)``, ``o = exp(l_a - l) o_a + exp(l_c - l) o_c``: softmax over the union of the keys.
    Backward: the flash backward of each part, given the *merged* output and log-sum-exp, yields that part's share
    of the union's gradient (its probabilities are exp(s - l); D = rowsum(dO * o) is the union's), so the key and
    value gradients are the parts' and the query gradient is their sum (as in ring attention).
    Grouped-query keys and values are kept for backward as given ([N, Hkv, k, D]) and repeated to the query heads
    for each kernel call; their gradients are summed back per group (kept repeated they cost Hq / Hkv times the
    memory: 67 MiB of an InSPO step of SmolLM2-135M).
    """

    @staticmethod
    def forward(ctx, q: Tensor, k_anc: Tensor, v_anc: Tensor, k_own: Tensor, v_own: Tensor,
                scale: float | None) -> Tensor:
        flash, heads = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu, q.shape[1]
        o_anc, l_anc = flash(q, repeat_kv(k_anc, heads), repeat_kv(v_anc, heads), 0.0, False, scale=scale)
        o_own, l_own = flash(q, repeat_kv(k_own, heads), repeat_kv(v_own, heads), 0.0, True, scale=scale)
        lse = torch.logaddexp(l_anc, l_own)  # fp32, [N, H, q_len]
        out = (o_anc.float() * (l_anc - lse).exp().unsqueeze(-1) + o_own.float() * (l_own - lse).exp().unsqueeze(-1))
        out = out.to(q.dtype)
        ctx.save_for_backward(q, k_anc, v_anc, k_own, v_own, out, lse)
        ctx.scale = scale
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
        q, k_anc, v_anc, k_own, v_own, out, lse = ctx.saved_tensors
        backward = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward
        heads, kv_heads = q.shape[1], k_anc.shape[1]
        grad = grad.contiguous()
        parts = []
        for k, v, causal in ((k_anc, v_anc, False), (k_own, v_own, True)):
            dq, dk, dv = backward(grad, q, repeat_kv(k, heads), repeat_kv(v, heads), out, lse, 0.0, causal,
                                  scale=ctx.scale)
            parts.append((dq, sum_kv_groups(dk, kv_heads), sum_kv_groups(dv, kv_heads)))
        (dq_anc, dk_anc, dv_anc), (dq_own, dk_own, dv_own) = parts
        return dq_anc + dq_own, dk_anc, dv_anc, dk_own, dv_own, None
