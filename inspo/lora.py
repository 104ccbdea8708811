"""LoRA policies through peft, and the reference they carry for free: the same weights with adapters off.

With ``model.lora`` set, the policy is the base model with low-rank adapters (Hu et al. 2021) on the target
modules; only the adapters train. The reference is then the *same* model run as a reference (no second copy of
the base weights):

- a fresh adapter: the reference is the base model, ``with policy.disable_adapter():`` (every LoRA layer returns
  its frozen base layer's output exactly).
- training on top of an existing adapter (``lora.adapter``): the adapter is loaded twice, as the trainable
  ``default`` and as a frozen ``reference`` adapter; the reference forward activates ``reference``. The extra
  memory is one adapter, not one model.

QLoRA (Dettmers et al. 2023) loads the base in 4 bit through bitsandbytes; it needs a CUDA GPU.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from inspo.errors import ConfigError, ModelSourceError

REFERENCE_ADAPTER = "reference"
"""Name of the frozen copy of an existing adapter that serves as the reference (adapter-on-adapter training)."""
TRAINED_ADAPTER = "default"


@dataclass(frozen=True)
class LoraSettings:
    """Low-rank adapters on the policy (``model.lora``); the reference becomes the base with adapters off.

    Attributes:
        rank: LoRA rank r (8-64 is typical; the update is ``(alpha / r) * B @ A``).
        alpha: LoRA scaling numerator (commonly 2 * rank).
        dropout: dropout on the adapter input (kept even when ``model.disable_dropout`` is set).
        target_modules: module names to adapt (e.g. ``[q_proj, v_proj]``) or ``all-linear`` (every linear layer
            except the output head).
        adapter: an existing peft adapter folder to continue training; a frozen copy of it is the reference.
        load_in_4bit: QLoRA: load the base model in 4-bit NF4 through bitsandbytes (CUDA GPU only).
        merge_on_export: export a merged plain HF model (True) or the adapter folder only (False).
    """

    rank: int = 16
    alpha: float = 32.0
    dropout: float = 0.0
    target_modules: list[str] | str = "all-linear"
    adapter: str | None = None
    load_in_4bit: bool = False
    merge_on_export: bool = True

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ConfigError(f"model.lora.rank must be >= 1, got {self.rank}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.lora.dropout must be in [0, 1), got {self.dropout}")


def check_4bit_available() -> None:
    """Raise a clear :class:`ConfigError` unless QLoRA can run here (CUDA GPU and bitsandbytes)."""
    if not torch.cuda.is_available():
        raise ConfigError("model.lora.load_in_4bit (QLoRA) needs a CUDA GPU and none is available here; "
                          "train plain LoRA instead (drop load_in_4bit, optionally with model.dtype bf16)")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise ConfigError("model.lora.load_in_4bit (QLoRA) needs the bitsandbytes package: "
                          "pip install bitsandbytes") from None


def apply_lora(model: nn.Module, settings: LoraSettings, gradient_checkpointing: bool | str = False) -> nn.Module:
    """Wrap ``model`` in a peft LoRA model: a new adapter, or ``settings.adapter`` loaded twice (trained + frozen).

    Only the trained adapter's parameters require gradients afterwards.
    """
    from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training

    if settings.load_in_4bit:
        from inspo.models import checkpointing_kwargs

        kwargs = checkpointing_kwargs(gradient_checkpointing)
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=bool(gradient_checkpointing),
                                                gradient_checkpointing_kwargs=kwargs)
    if settings.adapter is None:
        config = LoraConfig(r=settings.rank, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                            target_modules=settings.target_modules, task_type="CAUSAL_LM")
        return get_peft_model(model, config)
    try:
        policy = PeftModel.from_pretrained(model, settings.adapter, adapter_name=TRAINED_ADAPTER, is_trainable=True)
        policy.load_adapter(settings.adapter, adapter_name=REFERENCE_ADAPTER, is_trainable=False)
    except (OSError, ValueError) as err:
        raise ModelSourceError(f"cannot load the adapter model.lora.adapter={settings.adapter!r}: {err}") from err
    policy.set_adapter(TRAINED_ADAPTER)  # trainable; the reference adapter stays frozen
    return policy


def is_lora(model: nn.Module | None) -> bool:
    """Whether ``model`` is a peft model (a LoRA policy)."""
    from peft import PeftModel

    return isinstance(model, PeftModel)


@contextmanager
def reference_adapter(policy: nn.Module) -> Iterator[nn.Module]:
    """Run a LoRA policy as its reference: the frozen ``reference`` adapter if there is one, else adapters off.

    The reference is deterministic: the policy runs in eval mode inside the context (no ``lora_dropout`` of the
    reference adapter, no attention or other dropout of the base model, no router noise), as a separate
    reference model always does. Every submodule's train/eval mode is restored on exit.

    peft toggles ``requires_grad`` when it switches adapters; the flags are restored on exit, so a reference
    forward between the policy forward and ``backward()`` leaves the trained adapter's gradients intact.
    """
    flags = [(p, p.requires_grad) for p in policy.parameters()]
    modes = [(m, m.training) for m in policy.modules()]
    policy.eval()
    try:
        if REFERENCE_ADAPTER in policy.peft_config:
            policy.set_adapter(REFERENCE_ADAPTER, inference_mode=True)
            try:
                yield policy
            finally:
                policy.set_adapter(TRAINED_ADAPTER)
        else:
            with policy.disable_adapter():
                yield policy
    finally:
        for param, flag in flags:
            param.requires_grad_(flag)
        for module, mode in modes:
            module.training = mode  # per module, not .train(mode): that would overwrite deliberate submodule modes


def adapter_state_keys(state: dict[str, Any], prefix: str = "policy.") -> list[str]:
    """Keys of ``state`` that belong to the frozen base of a LoRA policy (everything under ``prefix`` but LoRA)."""
    return [key for key in state if key.startswith(prefix) and "lora_" not in key]


def merged_model(policy: nn.Module) -> nn.Module:
    """A plain HF model with the trained adapter merged in; ``policy`` itself is left untouched.

    Works on a copy, so the live policy keeps training (or evaluating) with its adapters afterwards; the copy
    costs one model's memory for the duration of the export.
    """
    import copy

    if getattr(policy, "is_loaded_in_4bit", False) or getattr(policy.base_model, "is_loaded_in_4bit", False):
        raise ConfigError("cannot merge an adapter into a 4-bit base in place; export the adapter "
                          "(model.lora.merge_on_export false) or run `inspo export --ckpt CKPT --merge` on the "
                          "checkpoint, which rebuilds a full-precision base")
    clone = copy.deepcopy(policy)
    return clone.merge_and_unload(adapter_names=[TRAINED_ADAPTER])


def count_parameters(*modules: nn.Module | None) -> dict[str, int]:
    """Parameters of the given modules, counted once per storage (shared and tied weights count once).

    Returns ``total`` and ``trainable`` element counts and ``storages``, the number of distinct storages: a
    reference that shares the policy's weights adds nothing here, a deep copy doubles it.
    """
    seen: dict[int, nn.Parameter] = {}
    for module in modules:
        if module is None:
            continue
        for param in module.parameters():
            sharded = type(param).__name__ == "DTensor" or type(param.data).__name__ == "DTensor"  # FSDP2: by object
            seen.setdefault(id(param) if sharded else param.untyped_storage().data_ptr(), param)
    params = list(seen.values())
    return {"total": sum(p.numel() for p in params), "trainable": sum(p.numel() for p in params if p.requires_grad),
            "storages": len(params)}
