"""Sharding for multi-GPU / multi-node training: FSDP1 via Lightning's FSDPStrategy, FSDP2 via fully_shard.

The wrap unit is the decoder layer. Every Hugging Face decoder layer derives from ``GradientCheckpointingLayer``,
so one class covers Llama, Mistral, Qwen, Gemma and the rest without naming the model family in a config.

FSDP1 (``configs/strategy/fsdp.yaml``, GPU): :class:`DecoderFSDPStrategy` is Lightning's FSDPStrategy with the
decoder layer as auto-wrap unit and, optionally, activation checkpointing of the same unit. The LightningModule
is the root FSDP unit, so the frozen reference (a submodule) is sharded along with the policy.

FSDP2 (``configs/strategy/fsdp2.yaml``, GPU or CPU/gloo): Lightning's ModelParallelStrategy calls
``PreferenceModule.configure_model()``, which calls :func:`shard_model` on the policy's and the reference's
scorers: ``fully_shard`` per decoder layer, then on the scorer as the root unit. The scorer's forward runs the
model body and the output projection, so the root unit gathers the embeddings, final norm and (tied) output
projection around exactly the computation that needs them.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch.strategies import FSDPStrategy
from torch import nn
from transformers.modeling_layers import GradientCheckpointingLayer

DECODER_LAYER = GradientCheckpointingLayer


class DecoderFSDPStrategy(FSDPStrategy):
    """Lightning's FSDPStrategy wrapping each decoder layer (policy and reference alike).

    Args:
        activation_checkpointing: recompute each decoder layer's activations in backward (saves memory).
        **kwargs: passed to ``FSDPStrategy`` (sharding_strategy, state_dict_type, cpu_offload, ...).
    """

    def __init__(self, activation_checkpointing: bool = False, **kwargs: Any) -> None:
        kwargs.setdefault("auto_wrap_policy", {DECODER_LAYER})
        if activation_checkpointing:
            kwargs.setdefault("activation_checkpointing_policy", {DECODER_LAYER})
        super().__init__(**kwargs)


def shard_model(root: nn.Module, mesh: Any, reshard_after_forward: bool = True) -> nn.Module:
    """FSDP2: ``fully_shard`` every decoder layer under ``root``, then ``root`` itself; returns ``root``."""
    from torch.distributed.fsdp import fully_shard

    for module in root.modules():
        if isinstance(module, DECODER_LAYER):
            fully_shard(module, mesh=mesh, reshard_after_forward=reshard_after_forward)
    fully_shard(root, mesh=mesh, reshard_after_forward=reshard_after_forward)
    return root
