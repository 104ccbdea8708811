"""TR-DPO: a reference that follows the policy by soft updates (Gorbatovski et al. 2024, arXiv 2404.09656).

Every ``tau`` optimizer steps the reference's parameters move towards the policy's (the paper's "soft update";
TRL 1.16 ``sync_ref_model`` with ``ref_model_mixup_alpha`` = alpha and ``ref_model_sync_steps`` = tau)::

    theta_ref <- alpha * theta + (1 - alpha) * theta_ref

alpha = 1 is the paper's "hard update" (the reference becomes a copy of the policy). TRL's convention, matched
here: the update runs after optimizer step s (1-based: the s-th update of the policy) when s % tau == 0, so the
first one follows step tau and sees the policy that step produced; parameters only (buffers are constants of the
architecture), computed as ``theta_ref * (1 - alpha) + alpha * theta`` in the parameters' dtype.

Closed form (what ``tests/test_reference_sync.py`` checks): with updates after steps tau, 2 tau, ..., k tau and
theta_j the policy after step j tau, unrolling the recursion k times gives::

    theta_ref(k) = (1 - alpha)^k theta_ref(0) + sum_{j=1..k} alpha (1 - alpha)^(k - j) theta_j

(weights that sum to 1: the reference is an exponential moving average of the policy sampled every tau steps).

Options of the reference modes that hold a live reference (``copy``, ``path``, ``adapter``)::

    --model.reference copy --model.reference.sync_every 512 --model.reference.sync_alpha 0.6

``cached`` and ``none`` refuse them (a cache stores log pi_ref of fixed weights; ``none`` has no reference).

LoRA (``--model.reference adapter``): the reference is a second, frozen adapter on the same base model, named
``reference`` (:data:`inspo.lora.REFERENCE_ADAPTER`), made as a copy of the trained adapter before the first step
(a fresh adapter has B = 0, so the reference starts as the base model exactly) and soft-updated from it. The update
acts on the adapter's parameters A and B separately, as the rule above acts on any parameter: it is NOT the soft
update of the merged weights. With alpha in (0, 1) the reference's weight delta after one update is::

    (alpha B + (1 - alpha) B_ref)(alpha A + (1 - alpha) A_ref)
        = alpha^2 BA + (1 - alpha)^2 B_ref A_ref + alpha (1 - alpha)(B A_ref + B_ref A)

whereas the merged rule gives alpha BA + (1 - alpha) B_ref A_ref (the scale lora_alpha / r multiplies both alike).
The two agree for alpha = 1 (hard update) and whenever the factors of policy and reference coincide. The merged
rule's delta has rank up to k * r after k updates, so it cannot live in a rank-r adapter; a run that needs it
exactly keeps a full copy: ``--model.reference copy`` with LoRA soft-updates the copy from the merged weights
W0 + (lora_alpha / r) BA of every adapted layer (:func:`merged_parameters`), at the memory cost of a second model.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from inspo.errors import ConfigError

DEFAULT_ALPHA = 0.6
"""alpha when ``sync_alpha`` is not given: TRL 1.16's ``ref_model_mixup_alpha`` default (its ``ref_model_sync_steps``
default, tau = 512, is not one here: ``sync_every`` unset means a fixed reference)."""


def check_sync(sync_every: int | None, sync_alpha: float | None) -> None:
    """Refuse a TR-DPO setting that cannot mean anything (one-line :class:`ConfigError`)."""
    if sync_every is not None and (isinstance(sync_every, bool) or sync_every < 1):
        raise ConfigError(f"model.reference.sync_every must be an optimizer step count >= 1 (or null: a fixed "
                          f"reference), got {sync_every!r}")
    if sync_alpha is None:
        return
    if sync_every is None:
        raise ConfigError(f"model.reference.sync_alpha={sync_alpha} is only read with model.reference.sync_every "
                          "(TR-DPO's tau): set both, or neither for a fixed reference")
    if not 0.0 < sync_alpha <= 1.0:
        raise ConfigError(f"model.reference.sync_alpha must be in (0, 1] (1: copy the policy), got {sync_alpha!r}")


@torch.no_grad()
def soft_update(pairs: list[tuple[str, torch.Tensor, torch.Tensor]], alpha: float) -> None:
    """``reference <- reference * (1 - alpha) + alpha * policy`` in place, for every (name, reference, policy)."""
    for _, reference, policy in pairs:
        reference.mul_(1.0 - alpha).add_(policy.to(reference.dtype), alpha=alpha)


@torch.no_grad()
def paired(reference: nn.Module, policy: nn.Module, where: str) -> list[tuple[str, nn.Parameter, torch.Tensor]]:
    """(name, reference parameter, policy tensor) for every parameter of ``reference``, matched by name.

    ``policy``'s tensors come from :func:`merged_parameters` (a LoRA policy contributes its merged weights, computed
    now: call this at every update). A reference without the policy's parameters (``path`` to another
    architecture) is one line naming the first mismatch and ``where`` it was configured.
    """
    source = dict(merged_parameters(policy))
    out = []
    for name, param in reference.named_parameters():
        tensor = source.get(name)
        if tensor is None or tensor.shape != param.shape:
            found = "missing" if tensor is None else f"of shape {tuple(tensor.shape)}"
            raise ConfigError(f"{where}: the reference cannot follow the policy: its parameter {name!r} of shape "
                              f"{tuple(param.shape)} is {found} in the policy (TR-DPO needs the same architecture)")
        out.append((name, param, tensor))
    return out


def merged_parameters(policy: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) of the plain model ``policy`` is: its own parameters, or for a peft LoRA policy the base
    model's names with every adapted weight merged, W0 + (lora_alpha / r) B A (the trained adapter only).

    The merged tensors are computed on every call (they change with every step); they are not parameters.
    """
    from inspo.lora import TRAINED_ADAPTER, is_lora

    if not is_lora(policy):
        yield from policy.named_parameters()
        return
    from peft.tuners.lora import LoraLayer

    base = policy.get_base_model()
    adapted: dict[str, LoraLayer] = {name: m for name, m in base.named_modules() if isinstance(m, LoraLayer)}
    for name, param in base.named_parameters():
        if ".lora_" in name or name.startswith("lora_"):
            continue  # the adapters themselves: they enter through the merged weight
        module, _, leaf = name.rpartition(".")
        owner, _, slot = module.rpartition(".")
        layer = adapted.get(owner) if slot == "base_layer" else None
        plain = f"{owner}.{leaf}" if slot == "base_layer" else name
        if layer is not None and leaf == "weight" and TRAINED_ADAPTER in layer.lora_A:
            yield plain, param + layer.get_delta_weight(TRAINED_ADAPTER).to(param.dtype)
        else:
            yield plain, param


def adapter_pairs(policy: nn.Module, trained: str, reference: str) -> list[tuple[str, nn.Parameter, nn.Parameter]]:
    """(name, reference adapter parameter, trained adapter parameter) for every LoRA parameter of ``policy``.

    peft names an adapter's tensors ``...lora_A.<adapter>.weight``, ``...lora_embedding_A.<adapter>``,
    ``...lora_magnitude_vector.<adapter>.weight`` (DoRA): the adapter's name is the segment after a ``lora_*`` one.
    """
    params = dict(policy.named_parameters())
    out = []
    for name, param in params.items():
        parts = name.split(".")
        slots = [i for i in range(1, len(parts)) if parts[i] == trained and parts[i - 1].startswith("lora_")]
        if not slots:
            continue
        parts[slots[-1]] = reference
        out.append((name, params[".".join(parts)], param))
    return out
