"""The built-in reference modes: ``copy``, ``path``, ``adapter``, ``cached`` and ``none`` (see ``base.py``).

The reference is always unconditioned, log pi_ref(y|x), under InSPO too; every mode returns it in the shape the
loss reads (:class:`~inspo.losses.PairLogps`).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from inspo.errors import ConfigError, InspoError
from inspo.losses import PairLogps, PreferenceLoss
from inspo.reference.base import Loader, ReferenceData, ReferenceMode, Score, register_reference
from inspo.reference.cache import ReferenceCache, load_or_build
from inspo.reference.sync import adapter_pairs, paired, soft_update

SYNC = "model.reference.sync_every"


class _HeldReference(ReferenceMode):
    """A mode that holds a frozen reference model and scores it live every step.

    With ``sync_every`` (TR-DPO, ``inspo.reference.sync``) the held model follows the policy; a LoRA policy
    contributes its merged weights W0 + (lora_alpha / r) BA, so the update is the exact soft update of the merged
    model (the reference is a full model, not an adapter).
    """

    frozen: nn.Module | None = None  # what build returned: the module holds it as module.reference

    def check(self, loss: PreferenceLoss, lora: Any | None) -> None:
        if self.sync_every and lora is not None and lora.load_in_4bit:
            raise ConfigError(f"{SYNC} with model.reference {self.name} follows the merged weights, which a 4-bit "
                              "base cannot give: use model.reference adapter (a second adapter follows the trained one)")

    def prepare(self, policy: nn.Module, data: ReferenceData) -> None:
        if self.sync_every and self.frozen is not None:
            paired(self.frozen, policy, SYNC)  # a reference of another architecture fails here, before any step

    def sync(self, policy: nn.Module, alpha: float) -> None:
        if self.frozen is not None:
            soft_update(paired(self.frozen, policy, SYNC), alpha)

    def logps(self, batch: Any, policy: nn.Module, score: Score, device: Any) -> PairLogps | None:
        if self.frozen is None:
            return None
        with torch.no_grad():
            return score(self.frozen)

    @contextmanager
    def generation_model(self, policy: nn.Module) -> Iterator[tuple[nn.Module, str]]:
        yield (self.frozen, "reference") if self.frozen is not None else (policy, "initial policy")


@register_reference("copy")
class CopyReference(_HeldReference):
    """A frozen deep copy of the initial policy (the default for full fine-tuning): a second model in memory."""

    name = "copy"

    def check(self, loss: PreferenceLoss, lora: Any | None) -> None:
        super().check(loss, lora)
        if lora is not None and lora.adapter:
            raise ConfigError("with model.lora.adapter the reference is that adapter, kept frozen: use "
                              "model.reference adapter (or auto)")

    def build(self, policy: nn.Module, load: Loader) -> nn.Module | None:
        self.frozen = copy.deepcopy(policy)
        return self.frozen


@register_reference("path")
class PathReference(_HeldReference):
    """Another checkpoint as the frozen reference, loaded with the policy's dtype and attention settings.

    Args:
        model: the reference model: an HF hub id, a local HF folder or a ``.gguf`` file.
    """

    name = "path"

    def __init__(self, model: str | None = None, sync_every: int | None = None, sync_alpha: float | None = None) -> None:
        super().__init__(sync_every, sync_alpha)
        self.model = model

    def check(self, loss: PreferenceLoss, lora: Any | None) -> None:
        super().check(loss, lora)
        if not self.model:
            raise ConfigError("model.reference 'path' needs its model: --model.reference path --model.reference.model "
                              "NAME (YAML: reference: {class_path: inspo.reference.PathReference, init_args: {model: "
                              "NAME}})")

    def build(self, policy: nn.Module, load: Loader) -> nn.Module | None:
        self.frozen = load(str(self.model))
        return self.frozen


@register_reference("adapter")
class AdapterReference(ReferenceMode):
    """A LoRA policy run as its own reference: adapters off, or the frozen copy of a continued adapter
    (:func:`inspo.lora.reference_adapter`); no second model in memory.

    With ``sync_every`` (TR-DPO) the reference is a second, frozen adapter ``reference`` on the same base, a copy
    of the trained adapter before the first step (of a fresh adapter: B = 0, the base model exactly), soft-updated
    from it: A and B each, not the merged weights (``inspo.reference.sync`` says how the two differ). It is saved
    in checkpoints with the trained adapter.
    """

    name = "adapter"

    def check(self, loss: PreferenceLoss, lora: Any | None) -> None:
        if lora is None:
            raise ConfigError("model.reference 'adapter' runs the LoRA policy with its adapters off: set model.lora")

    def prepare(self, policy: nn.Module, data: ReferenceData) -> None:
        from inspo.lora import REFERENCE_ADAPTER, TRAINED_ADAPTER

        if not self.sync_every or REFERENCE_ADAPTER in policy.peft_config:  # a continued adapter brings its copy
            return
        with torch.random.fork_rng(devices=[]):  # peft initialises the new adapter randomly: leave the seed alone
            policy.add_adapter(REFERENCE_ADAPTER, copy.deepcopy(policy.peft_config[TRAINED_ADAPTER]))
        policy.set_adapter(TRAINED_ADAPTER)  # the trained adapter stays active and alone in requires_grad
        pairs = adapter_pairs(policy, TRAINED_ADAPTER, REFERENCE_ADAPTER)
        with torch.no_grad():
            for _, reference, trained in pairs:
                reference.copy_(trained).requires_grad_(False)

    def sync(self, policy: nn.Module, alpha: float) -> None:
        from inspo.lora import REFERENCE_ADAPTER, TRAINED_ADAPTER

        soft_update(adapter_pairs(policy, TRAINED_ADAPTER, REFERENCE_ADAPTER), alpha)

    def logps(self, batch: Any, policy: nn.Module, score: Score, device: Any) -> PairLogps | None:
        from inspo.lora import reference_adapter

        with torch.no_grad(), reference_adapter(policy) as reference:
            return score(reference)

    @contextmanager
    def generation_model(self, policy: nn.Module) -> Iterator[tuple[nn.Module, str]]:
        from inspo.lora import reference_adapter

        with reference_adapter(policy) as model:
            yield model, "reference (adapter)"


@register_reference("cached")
class CachedReference(ReferenceMode):
    """log pi_ref(y|x) of every pair computed once before training, stored on disk and looked up afterwards; no
    reference model is held during training (``inspo.reference.cache``).

    Args:
        model: the reference model to compute the cache with (loaded for the occasion, then freed); None: the
            initial policy (copy semantics, no second copy is ever made).

    Attributes:
        pairs: the pairs to cache, when set before the model is configured (scripts, benchmarks); None: the train
            and validation pairs of the trainer's datamodule.
        cache: the loaded cache, once :meth:`prepare` ran.
    """

    name = "cached"

    def __init__(self, model: str | None = None, sync_every: int | None = None, sync_alpha: float | None = None) -> None:
        super().__init__(sync_every, sync_alpha)
        self.model = model
        self.pairs: Sequence[Any] | None = None
        self.cache: ReferenceCache | None = None

    def check(self, loss: PreferenceLoss, lora: Any | None) -> None:
        if self.sync_every:
            raise ConfigError(f"{SYNC} (TR-DPO) needs a live reference, and 'cached' stores log pi_ref of fixed "
                              "weights: use model.reference copy, path or adapter")

    def prepare(self, policy: nn.Module, data: ReferenceData) -> None:
        pairs = self.pairs if self.pairs is not None else data.pairs
        if not pairs:
            raise InspoError("model.reference 'cached' needs the pairs to cache: run it through a Trainer with a "
                             "PreferenceDataModule (its pairs are set up before the model is configured)")
        name = self.model
        reference = (lambda: data.load(name)) if name else policy  # a loaded model is freed after the build
        self.cache = load_or_build(pairs, reference, data.settings, data.pad_id, layout=data.layout,
                                   is_global_zero=data.is_global_zero, barrier=data.barrier)

    def logps(self, batch: Any, policy: nn.Module, score: Score, device: Any) -> PairLogps | None:
        return self.cache.lookup(batch, device) if self.cache is not None else None


@register_reference("none")
class NoReference(ReferenceMode):
    """No reference (reference-free losses: SimPO, ORPO, ...)."""

    name = "none"

    def check(self, loss: PreferenceLoss, lora: Any | None) -> None:
        if self.sync_every:
            raise ConfigError(f"{SYNC} (TR-DPO) moves a reference towards the policy and 'none' has no reference: "
                              "use model.reference copy, path or adapter")
        if loss.requires_reference:
            from inspo.losses import LOSSES

            free = ", ".join(sorted(name for name, cls in LOSSES.items() if not cls.requires_reference))
            raise ConfigError(f"loss {type(loss).__name__} needs a reference model; set model.reference to copy or "
                              f"path (or choose a reference-free loss: {free})")
