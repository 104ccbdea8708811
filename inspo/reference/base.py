"""The reference-mode contract: where log pi_ref(y|x) comes from, chosen like the loss.

``model.reference`` takes a registered short name (``copy``, ``path``, ``adapter``, ``cached``, ``none``, or
``auto``: resolved by :func:`resolve_reference` from the loss and the LoRA settings) or a ``class_path`` with its
``init_args``, e.g. ``{class_path: inspo.reference.PathReference, init_args: {model: NAME}}``, or on the command
line ``--model.reference path --model.reference.model NAME``.

A mode is a small class. :class:`~inspo.module.PreferenceModule` calls it in this order, always with explicit
arguments (never the module itself):

1. :meth:`ReferenceMode.check` when the module is built: refuse a mode that cannot serve this loss / LoRA setting.
2. :meth:`ReferenceMode.build` right after the policy is loaded (before dropout is turned off and adapters are
   added): the frozen model to hold, or None. The module holds it as ``module.reference``: dropout off, frozen,
   eval mode, sharded with the policy under FSDP, left out of checkpoints (:attr:`ReferenceMode.unsaved_prefixes`).
3. :meth:`ReferenceMode.prepare` once the policy is final (adapters added), before any step: precompute what the
   mode needs (``cached`` builds its cache here, from the initial weights).
4. :meth:`ReferenceMode.logps` for every batch: the reference's :class:`~inspo.losses.PairLogps`, or None.
5. :meth:`ReferenceMode.generation_model` for the samples callback: the model whose answers show "the reference".
6. :meth:`ReferenceMode.after_optimizer_step` after every optimizer step (not after accumulation micro-batches):
   TR-DPO's soft update of the reference towards the policy when ``sync_every`` is set (``inspo.reference.sync``).
   A synced reference is no longer rebuildable from its source, so checkpoints then keep it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar

from torch import nn

from inspo.layout import Layout
from inspo.losses import PairLogps, PreferenceLoss
from inspo.registry import Registry

Score = Callable[[nn.Module], PairLogps]
"""model -> its unconditioned log-probs log pi(y|x) of the current batch (the module's one pair forward)."""
Loader = Callable[[str], nn.Module]
"""model name -> the model, loaded with the policy's settings (dtype, attention implementation, ...)."""


@dataclass
class ReferenceData:
    """What a mode that precomputes (``cached``) may read in :meth:`ReferenceMode.prepare`.

    Attributes:
        pairs: every pair the run scores (train and validation); empty without a datamodule.
        settings: tokenisation settings (tokenizer, chat template, max lengths), part of a cache key.
        pad_id: the pad token id.
        layout: the layout the run scores with.
        load: loads a model by name (dtype, attention implementation and remote-code setting of the policy).
        is_global_zero: whether this process writes shared files (others wait on ``barrier`` and read them).
        barrier: synchronises the processes of a distributed run; None in a single process.
    """

    pairs: Sequence[Any]
    settings: dict[str, Any]
    pad_id: int
    layout: Layout
    load: Loader
    is_global_zero: bool = True
    barrier: Callable[[], None] | None = field(default=None, repr=False)

    @classmethod
    def from_trainer(cls, trainer: Any, pad_id: int, layout: Layout, load: Loader) -> ReferenceData:
        """The pairs and tokenisation settings of ``trainer``'s datamodule (set up before the model is
        configured), and its process rank and barrier; an empty set of pairs without a trainer or datamodule."""
        datamodule = getattr(trainer, "datamodule", None) if trainer is not None else None
        pairs = [*(getattr(datamodule, "train_pairs", None) or []), *(getattr(datamodule, "val_pairs", None) or [])]
        token_settings = getattr(datamodule, "token_settings", None)  # PreferenceDataModule: data.tokenizer, read.*
        settings = token_settings() if token_settings is not None else dict.fromkeys(
            ("tokenizer", "chat_template", "max_length", "max_prompt_length"))
        distributed = trainer is not None and trainer.world_size > 1
        return cls(pairs, settings, pad_id, layout, load, is_global_zero=trainer is None or trainer.is_global_zero,
                   barrier=trainer.strategy.barrier if distributed else None)


class ReferenceMode:
    """Base class of every reference mode; subclasses override the hooks they need (see the module docstring).

    The defaults describe a mode with no reference at all: nothing held, nothing precomputed, ``logps`` None,
    samples show the policy as it was when training started.

    Args:
        sync_every: TR-DPO (``inspo.reference.sync``): soft-update the reference towards the policy after every
            ``sync_every`` optimizer steps (the paper's tau, TRL's ``ref_model_sync_steps``, 512 there by default);
            None: a fixed reference (the default). ``copy``, ``path`` and ``adapter`` take it; ``cached`` and
            ``none`` refuse it.
        sync_alpha: weight of the policy in each update, ``ref <- alpha * policy + (1 - alpha) * ref`` (the paper's
            alpha, TRL's ``ref_model_mixup_alpha``); 1 copies the policy. None: 0.6, TRL's default (None keeps
            the saved hyperparameters of a run without TR-DPO as they were).
    """

    name: ClassVar[str] = ""
    """Short name in logs and run statistics (``copy``, ``cached``, ...)."""

    def __init__(self, sync_every: int | None = None, sync_alpha: float | None = None) -> None:
        from inspo.reference.sync import check_sync

        check_sync(sync_every, sync_alpha)
        self.sync_every = sync_every
        self.sync_alpha = sync_alpha

    @property
    def unsaved_prefixes(self) -> tuple[str, ...]:
        """State-dict key prefixes that checkpoints leave out: the model :meth:`build` returns is held as
        ``module.reference`` and rebuilt from its source on resume, so checkpoints hold the policy only; a synced
        reference (``sync_every``) has left its source behind and is saved."""
        return () if getattr(self, "sync_every", None) else ("reference.",)

    def check(self, loss: PreferenceLoss, lora: Any | None) -> None:
        """Raise a :class:`ConfigError` if this mode cannot serve ``loss`` or the LoRA settings (``lora``:
        :class:`inspo.lora.LoraSettings` or None)."""

    def build(self, policy: nn.Module, load: Loader) -> nn.Module | None:
        """The model to hold as the reference (made from the freshly loaded ``policy`` or loaded by ``load``)."""
        return None

    def prepare(self, policy: nn.Module, data: ReferenceData) -> None:
        """Precompute what the mode needs, from the initial (final-architecture) ``policy``, before any step."""

    def logps(self, batch: Any, policy: nn.Module, score: Score, device: Any) -> PairLogps | None:
        """log pi_ref(y_w|x), log pi_ref(y_l|x) of a :class:`~inspo.data.datamodule.PairBatch` (on ``device``), or
        None without a reference. ``score(model)`` runs the module's pair forward on ``model`` (unconditioned)."""
        return None

    @contextmanager
    def generation_model(self, policy: nn.Module) -> Iterator[tuple[nn.Module, str]]:
        """(model, label) whose answers the samples callback shows as the reference's, at the start of training."""
        yield policy, "initial policy"

    def after_optimizer_step(self, step: int, policy: nn.Module) -> None:
        """Called after optimizer step ``step`` (1-based count of policy updates): TR-DPO's soft update when
        ``step`` is a multiple of ``sync_every`` (TRL's convention: the first update follows step ``sync_every``)."""
        every = getattr(self, "sync_every", None)
        if every and step % every == 0:
            from inspo.reference.sync import DEFAULT_ALPHA

            alpha = getattr(self, "sync_alpha", None)
            self.sync(policy, DEFAULT_ALPHA if alpha is None else alpha)

    def sync(self, policy: nn.Module, alpha: float) -> None:
        """``reference <- alpha * policy + (1 - alpha) * reference`` (modes that can follow the policy)."""
        raise NotImplementedError(f"reference mode {self} cannot follow the policy")

    def __str__(self) -> str:
        name = self.name or type(self).__name__
        every, alpha = getattr(self, "sync_every", None), getattr(self, "sync_alpha", None)
        if not every:
            return name
        from inspo.reference.sync import DEFAULT_ALPHA

        return f"{name} (TR-DPO: alpha {DEFAULT_ALPHA if alpha is None else alpha} every {every} steps)"


REFERENCES: Registry[ReferenceMode] = Registry("reference mode", ReferenceMode, special=("auto",))
"""Registered reference modes by short name (``auto`` is not one: :func:`resolve_reference` picks it)."""


def register_reference(name: str) -> Callable[[type[ReferenceMode]], type[ReferenceMode]]:
    """Class decorator: select the mode by ``model.reference: NAME``."""
    return REFERENCES.register(name)


def resolve_reference(spec: ReferenceMode | str | dict[str, Any], requires_reference: bool,
                      lora: bool) -> ReferenceMode:
    """A mode instance from an instance, a short name, ``auto``, or a saved ``{"class_path", "init_args"}``.

    ``auto``: ``adapter`` with LoRA (no second model in memory), else ``copy``, when the loss needs a reference;
    ``none`` when it does not.
    """
    if isinstance(spec, str) and spec.strip() == "auto":
        spec = ("adapter" if lora else "copy") if requires_reference else "none"
    return REFERENCES.resolve(spec)
