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


class _HeldReference(ReferenceMode):
    """A mode that holds a frozen reference model and scores it live every step."""

    frozen: nn.Module | None = None  # what build returned: the module holds it as module.reference

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

    def __init__(self, model: str | None = None) -> None:
        self.model = model

    def check(self, loss: PreferenceLoss, lora: Any | None) -> None:
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
    (:func:`inspo.lora.reference_adapter`); no second model in memory."""

    name = "adapter"

    def check(self, loss: PreferenceLoss, lora: Any | None) -> None:
        if lora is None:
            raise ConfigError("model.reference 'adapter' runs the LoRA policy with its adapters off: set model.lora")

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

    def __init__(self, model: str | None = None) -> None:
        self.model = model
        self.pairs: Sequence[Any] | None = None
        self.cache: ReferenceCache | None = None

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
        if loss.requires_reference:
            raise ConfigError(f"loss {type(loss).__name__} needs a reference model; set model.reference to copy or "
                              "path (or choose a reference-free loss: simpo, orpo)")
