"""Sharding for multi-GPU / multi-node training: FSDP1 via Lightning's FSDPStrategy, FSDP2 via fully_shard.

The wrap unit is the decoder layer. Every Hugging Face decoder layer derives from ``GradientCheckpointingLayer``,
so one class covers Llama, Mistral, Qwen, Gemma and the rest without naming the model family in a config.

FSDP1 (``configs/strategy/fsdp.yaml``, GPU only): :class:`DecoderFSDPStrategy` is Lightning's FSDPStrategy with the
decoder layer as auto-wrap unit and, optionally, activation checkpointing of the same unit. The LightningModule
is the root FSDP unit, so the frozen reference (a submodule) is sharded along with the policy.

FSDP2 (``configs/strategy/fsdp2.yaml``, GPU with nccl or CPU with gloo): :class:`FSDP2Strategy` is Lightning's
ModelParallelStrategy with every process one data-parallel shard. It calls ``PreferenceModule.configure_model()``,
which wraps the policy and the reference in a :class:`LogpScorer` each and calls :func:`shard_model` on them:
``fully_shard`` per decoder layer, then on the scorer as the root unit. The scorer's forward runs the model body
*and* the output projection (``inspo.logprobs`` calls them separately; ``model.forward`` only for a model that
fails the start-up check of ``inspo.checks``), so the root unit
gathers the embeddings, final norm and (tied) output projection around exactly the computation that needs them.
Checkpoints are distributed-checkpoint folders (one shard file per rank plus ``meta.pt``) holding the policy only;
``inspo export`` turns them into a plain HF folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.fabric.strategies.fsdp import _METADATA_FILENAME, _is_sharded_checkpoint
from lightning.pytorch.strategies import FSDPStrategy, ModelParallelStrategy
from torch import Tensor, nn
from transformers.modeling_layers import GradientCheckpointingLayer

from inspo.errors import ConfigError
from inspo.logprobs import target_logps

DECODER_LAYER = GradientCheckpointingLayer
CHECKPOINT_META = _METADATA_FILENAME
"""The file of a sharded (distributed) checkpoint folder that holds everything but the tensors."""


class DecoderFSDPStrategy(FSDPStrategy):
    """Lightning's FSDPStrategy wrapping each decoder layer (policy and reference alike). GPU only.

    Args:
        activation_checkpointing: recompute each decoder layer's activations in backward (saves memory).
        **kwargs: passed to ``FSDPStrategy`` (sharding_strategy, state_dict_type, cpu_offload, ...).
    """

    def __init__(self, activation_checkpointing: bool = False, **kwargs: Any) -> None:
        kwargs.setdefault("auto_wrap_policy", {DECODER_LAYER})
        if activation_checkpointing:
            kwargs.setdefault("activation_checkpointing_policy", {DECODER_LAYER})
        super().__init__(**kwargs)

    @property
    def mixed_precision_config(self) -> Any:
        """FSDP's mixed precision; for ``bf16-mixed`` (``16-mixed``): fp32 master shards, bf16 (fp16) compute.

        The sharded parameters and the optimizer stay fp32 (``model.dtype: fp32``, see ``inspo.optim``); each
        layer is all-gathered as a bf16 copy for forward and backward. Unlike Lightning's default for these
        precisions, gradients are reduced in fp32 (a bf16 sum over many ranks and micro-batches drops low bits) and
        buffers stay fp32: a bf16 RoPE ``inv_freq`` buffer would put the rotary angles of position 2000 off by
        radians. An explicit ``mixed_precision`` argument wins.
        """
        precision = getattr(self.precision_plugin, "precision", None)
        if self.mixed_precision is None and precision in ("bf16-mixed", "16-mixed"):
            from torch.distributed.fsdp import MixedPrecision

            compute = torch.bfloat16 if precision == "bf16-mixed" else torch.float16
            return MixedPrecision(param_dtype=compute, reduce_dtype=torch.float32, buffer_dtype=torch.float32)
        return super().mixed_precision_config

    def setup_environment(self) -> None:
        if self.root_device.type != "cuda":
            raise ConfigError(f"configs/strategy/fsdp.yaml (FSDPStrategy) runs on GPUs only, not on "
                              f"{self.root_device.type}; on a CPU use configs/strategy/fsdp2.yaml (FSDP2 over gloo)")
        super().setup_environment()


class FSDP2Strategy(ModelParallelStrategy):
    """FSDP2 through Lightning's ModelParallelStrategy: all processes of all nodes form one data-parallel mesh.

    Lightning's default ``data_parallel_size="auto"`` is the number of nodes (it expects tensor parallelism inside a
    node); here every process holds one shard and no tensor parallelism is used.

    Loading a sharded checkpoint reads only the keys the module saves (the policy, not the frozen reference,
    which is rebuilt from its source), and checks that the checkpoint was trained with the same model and loss
    config before any tensor is read.

    Args:
        save_distributed_checkpoint: each rank writes its shard into a checkpoint folder (True), or rank 0 writes
            one full file (False; gathers the whole model and optimizer state on rank 0).
        **kwargs: passed to ``ModelParallelStrategy`` (process_group_backend, timeout).
    """

    def __init__(self, save_distributed_checkpoint: bool = True, **kwargs: Any) -> None:
        super().__init__(data_parallel_size="auto", tensor_parallel_size=1,
                         save_distributed_checkpoint=save_distributed_checkpoint, **kwargs)

    def setup_environment(self) -> None:
        self._data_parallel_size = self.num_nodes * self.num_processes
        super().setup_environment()

    def load_checkpoint(self, checkpoint_path: Any, weights_only: bool | None = None) -> dict[str, Any]:
        path = Path(self.broadcast(checkpoint_path))
        module = self.lightning_module
        if not _is_sharded_checkpoint(path):
            if module is not None and hasattr(module, "check_resumable") and path.is_file():
                module.check_resumable(torch.load(path, map_location="cpu", mmap=True, weights_only=False), path)
            return super().load_checkpoint(checkpoint_path, weights_only=weights_only)
        from torch.distributed.checkpoint import load
        from torch.distributed.checkpoint.state_dict import (
            get_model_state_dict,
            get_optimizer_state_dict,
            set_model_state_dict,
            set_optimizer_state_dict,
        )

        metadata = torch.load(path / CHECKPOINT_META, weights_only=False)
        if module is not None and hasattr(module, "check_resumable"):
            module.check_resumable(metadata, path)
        unsaved = tuple(getattr(module, "unsaved_prefixes", ()))
        model_state = {k: v for k, v in get_model_state_dict(self.model).items() if not k.startswith(unsaved)}
        load({"state_dict": model_state}, checkpoint_id=path)
        set_model_state_dict(self.model, model_state, options=_state_options(strict=False))
        for index, optimizer in enumerate(self.optimizers):
            key = f"optimizer_{index}"
            optimizer_state = {key: get_optimizer_state_dict(self.model, optimizer)}
            load(optimizer_state, checkpoint_id=path)
            set_optimizer_state_dict(self.model, optimizer, optim_state_dict=optimizer_state[key])
        return metadata


def _state_options(strict: bool) -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(strict=strict)


class LogpScorer(nn.Module):
    """``forward(rows)`` = :func:`inspo.logprobs.target_logps` of ``model``: the unit FSDP2 shards as its root.

    The scorer is not registered as a submodule of the LightningModule (the model already is, as ``policy`` or
    ``reference``), so state-dict keys stay ``policy.*``.
    """

    def __init__(self, model: nn.Module, chunk_size: int) -> None:
        super().__init__()
        self.model = model
        self.chunk_size = chunk_size

    def forward(self, rows: Any, full_logits: bool = False, log_sum_sq: bool = False) -> Tensor:
        return target_logps(self.model, rows, self.chunk_size, full_logits, log_sum_sq)


def shard_model(root: nn.Module, mesh: Any, reshard_after_forward: bool = True) -> nn.Module:
    """FSDP2: ``fully_shard`` every decoder layer under ``root``, then ``root`` itself; returns ``root``."""
    from torch.distributed.fsdp import fully_shard

    for module in root.modules():
        if isinstance(module, DECODER_LAYER):
            fully_shard(module, mesh=mesh, reshard_after_forward=reshard_after_forward)
    fully_shard(root, mesh=mesh, reshard_after_forward=reshard_after_forward)
    return root


def is_sharded(model: nn.Module | None) -> bool:
    """Whether ``model``'s parameters are FSDP2 shards (DTensors)."""
    from torch.distributed.tensor import DTensor

    return model is not None and any(isinstance(p, DTensor) for p in model.parameters())


def full_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The full (unsharded) state dict of ``model`` on CPU; a collective under FSDP2: call it on every rank."""
    if not is_sharded(model):
        return {k: v.detach().cpu() for k, v in model.state_dict().items()}
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
