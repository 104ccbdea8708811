"""PreferenceModule: the policy, its frozen reference, one pair forward and one training step for every loss."""

from __future__ import annotations

import copy
import importlib
import inspect
import logging
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule
from torch import Tensor, nn
from torchmetrics import MeanMetric
from typing_extensions import override

from inspo.conditioning import CONDITIONINGS, REFERENCE_SEQUENCES, ReflectionTemplate, Sequences, make_conditioning
from inspo.data.datamodule import PairBatch
from inspo.distributed import LogpScorer, full_state_dict, is_sharded, shard_model
from inspo.errors import ConfigError
from inspo.guards import NonFiniteLossError, OnNonFinite, check_on_nonfinite, nonfinite_message, skip_allowed
from inspo.layout import make_layout, packed_unsupported_reason
from inspo.logprobs import target_logps
from inspo.lora import LoraSettings, adapter_state_keys, apply_lora, reference_adapter
from inspo.losses import LOSSES, LossOutput, PairLogps, PreferenceLoss
from inspo.models import BUNDLED_SMOLLM2, DTYPES, load_causal_lm, load_tokenizer
from inspo.optim import OptimConfig, make_optimizer, start_schedules
from inspo.reference import ReferenceCache, cached_reference

log = logging.getLogger("inspo")

METRICS = ("loss", "reward_accuracy", "reward_margin", "chosen_reward", "rejected_reward", "chosen_logp",
           "rejected_logp")
PROGRESS_BAR = ("loss", "reward_accuracy", "reward_margin")
RESUME_KEYS = ("model", "random_init", "loss", "conditioning", "reflection_template", "reference_model", "dtype",
               "lora")
"""Hyperparameters that define the trained model and its objective: a resumed run must have the same values (not
``reference``: ``auto`` and the mode it resolves to are the same run; not LoRA's ``merge_on_export``)."""


def resolve_loss(loss: PreferenceLoss | str | dict[str, Any]) -> PreferenceLoss:
    """A loss instance from an instance, a registered short name (``dpo``, ``simpo``, ...) or the saved
    ``{"class_path", "init_args"}`` of :func:`loss_hparams` (``PreferenceModule.load_from_checkpoint``)."""
    if isinstance(loss, PreferenceLoss):
        return loss
    if isinstance(loss, dict) and "class_path" in loss:
        module, _, name = str(loss["class_path"]).rpartition(".")
        return getattr(importlib.import_module(module), name)(**(loss.get("init_args") or {}))
    if loss not in LOSSES:
        raise ConfigError(f"unknown loss {loss!r}; registered losses: {', '.join(sorted(LOSSES))}")
    return LOSSES[loss]()


class PreferenceModule(LightningModule):
    """A policy trained with a pairwise preference loss against a frozen reference.

    Args:
        model: the policy: an HF hub id, a local HF folder, a ``.gguf`` file, or ``bundled:SmolLM2-135M-Instruct``.
        loss: a registered loss name (``dpo``, ``ipo``, ``simpo``, ...) or a loss given by ``class_path``.
        conditioning: ``inspo`` (log pi(y_w|x,y_l), log pi(y_l|x,y_w)) or ``standard`` (log pi(y|x)).
        reflection_template: text around the alternative response under InSPO; default: raw concatenation.
        reference: ``auto`` (``copy`` if the loss needs a reference, else ``none``), ``copy`` (frozen copy of the
            initial policy), ``path`` (load ``reference_model``), ``cached`` (log pi_ref(y|x) of every pair computed
            once, from ``reference_model`` if given else the initial policy, and stored on disk; no reference model
            is held during training, see ``inspo.reference``) or ``none``.
        reference_model: the reference model name when ``reference: path`` (or ``cached``).
        layout: ``packed`` (one row per pair, prompt computed once, exact; falls back to ``separate`` with one log
            line when the attention implementation cannot take a 4D mask) or ``separate`` (one padded row per
            sequence).
        max_tokens_per_row: packed layout only: token budget of a row holding several pairs as block-diagonal
            segments (removes padding); None puts one pair per row.
        dtype: parameter dtype of policy and reference: fp32, bf16 or fp16. Log-softmax is fp32 regardless.
        attn_implementation: sdpa, eager, flex_attention, flash_attention_2, or None for the library default.
        random_init: config overrides for a randomly initialised policy (tests, benchmarks); None loads weights.
        disable_dropout: set dropout to 0 in policy and reference, so the log-ratio is 0 at step 0.
        logprob_chunk_size: target tokens per output-projection chunk (bounds the [tokens x vocab] logits).
        optim: optimizer and learning-rate schedule.
        export_dir: where ``fit`` writes the trained policy as a plain HF folder at its end; ``auto`` is
            ``<log_dir>/hf_model``; None writes nothing.
        lora: train low-rank adapters instead of every weight (``rank``, ``alpha``, ``dropout``,
            ``target_modules``, ``adapter`` to continue one, ``load_in_4bit`` for QLoRA); None trains all weights.
            With LoRA, ``reference: auto`` is ``adapter``: the same model with its adapters off (or, when
            continuing an adapter, a frozen copy of that adapter), no second model in memory.
        gradient_checkpointing: recompute decoder layers in backward (less activation memory, more compute).
        trust_remote_code: allow models whose code lives in their hub repository (off: it runs that code).
        on_nonfinite: a NaN/inf training loss stops the run (``error``: step, data rows, last checkpoint) or
            skips the batch and counts it in ``train/nonfinite_skipped`` (``skip``; single process only).
    """

    def __init__(
        self,
        model: str = BUNDLED_SMOLLM2,
        loss: PreferenceLoss | str = "dpo",
        conditioning: str = "inspo",
        reflection_template: ReflectionTemplate | None = None,
        reference: Literal["auto", "copy", "path", "cached", "adapter", "none"] = "auto",
        reference_model: str | None = None,
        layout: Literal["separate", "packed"] = "packed",
        max_tokens_per_row: int | None = None,
        dtype: str = "fp32",
        attn_implementation: str | None = "sdpa",
        random_init: dict[str, Any] | None = None,
        disable_dropout: bool = True,
        logprob_chunk_size: int = 1024,
        optim: OptimConfig | None = None,
        export_dir: str | None = "auto",
        lora: LoraSettings | None = None,
        gradient_checkpointing: bool = False,
        trust_remote_code: bool = False,
        on_nonfinite: OnNonFinite = "error",
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["loss"])
        self.loss = resolve_loss(loss)
        self.hparams["loss"] = loss_hparams(self.loss)  # the shape LightningCLI parses back from a checkpoint
        if reference == "auto":
            reference = ("adapter" if lora is not None else "copy") if self.loss.requires_reference else "none"
        if reference == "adapter" and lora is None:
            raise ConfigError("model.reference 'adapter' runs the LoRA policy with its adapters off: set model.lora")
        if lora is not None and lora.adapter and reference == "copy":
            raise ConfigError("with model.lora.adapter the reference is that adapter, kept frozen: use "
                              "model.reference adapter (or auto)")
        if reference == "none" and self.loss.requires_reference:
            raise ConfigError(f"loss {type(self.loss).__name__} needs a reference model; set model.reference to "
                              "copy or path (or choose a reference-free loss: simpo, orpo)")
        if reference == "path" and not reference_model:
            raise ConfigError("model.reference is 'path' but model.reference_model is not set")
        self.reference_mode = reference
        self.layout = make_layout(layout, max_tokens_per_row)
        self.optim = optim or OptimConfig()
        # Names checked here, not when the model loads, so a typo fails before any data or weights are read.
        if conditioning not in CONDITIONINGS:
            choices = ", ".join(sorted(CONDITIONINGS))
            raise ConfigError(f"unknown conditioning {conditioning!r}; choose one of: {choices}")
        if dtype not in DTYPES:
            raise ConfigError(f"unknown model.dtype {dtype!r}; choose one of: {', '.join(sorted(DTYPES))}")
        check_on_nonfinite(on_nonfinite)
        self.nonfinite_skipped = 0
        # Keep the instances: under LightningCLI the saved hparams hold dataclasses as dicts.
        self.lora = lora
        self.reflection_template = reflection_template
        if logprob_chunk_size < 1:
            raise ConfigError(f"model.logprob_chunk_size must be >= 1, got {logprob_chunk_size}")
        self.policy: nn.Module | None = None
        self.reference: nn.Module | None = None
        self.reference_cache: ReferenceCache | None = None
        self.tokenizer = None
        self.conditioning = None
        self.metrics = nn.ModuleDict(
            {f"{stage}/{name}": MeanMetric() for stage in ("train", "val", "test") for name in METRICS}
        )
        # The reference is never saved: it is rebuilt from its source (``copy`` is taken before a checkpoint is
        # restored), so checkpoints hold the policy only and restoring them must not ask for reference weights.
        self.strict_loading = False
        self._scorers: dict[int, nn.Module] = {}  # id(model) -> its FSDP2 root unit (not a registered submodule)

    # ---------------------------------------------------------------- models
    @override
    def configure_model(self) -> None:
        if self.policy is not None:
            return
        hp = self.hparams
        self.tokenizer = load_tokenizer(hp.model, trust_remote_code=hp.trust_remote_code)
        self.conditioning = make_conditioning(hp.conditioning, self.tokenizer, self.reflection_template)
        load = {"dtype": hp.dtype, "attn_implementation": hp.attn_implementation,
                "trust_remote_code": hp.trust_remote_code, "gradient_checkpointing": hp.gradient_checkpointing,
                "load_in_4bit": self.lora is not None and self.lora.load_in_4bit}
        self.policy = load_causal_lm(hp.model, random_init=hp.random_init, **load)
        if self.reference_mode == "copy":
            self.reference = copy.deepcopy(self.policy)
        elif self.reference_mode == "path":
            self.reference = load_causal_lm(hp.reference_model, **load)
        reason = packed_unsupported_reason(self.policy.config) if self.layout.needs_4d_mask else None
        if reason is not None:
            log.warning("inspo: layout 'packed' is not exact here (%s): using layout 'separate'", reason)
            self.layout = make_layout("separate")
        for m in (self.policy, self.reference):
            if m is not None and hp.disable_dropout:
                for sub in m.modules():
                    if isinstance(sub, nn.Dropout):
                        sub.p = 0.0
        if self.lora is not None:  # after the dropout loop: an explicit lora.dropout is kept
            self.policy = apply_lora(self.policy, self.lora, hp.gradient_checkpointing)
        if self.reference_mode == "cached":
            self.reference_cache = cached_reference(self)  # before any training step: the initial weights
        self.policy.train()  # from_pretrained returns eval mode; Lightning keeps the modes it finds
        if self.reference is not None:
            self.reference.requires_grad_(False).eval()
        if self.device_mesh is not None:  # FSDP2 (inspo.distributed.FSDP2Strategy): shard policy and reference
            for model in (self.policy, self.reference):
                if model is not None:
                    scorer = LogpScorer(model, hp.logprob_chunk_size)
                    self._scorers[id(model)] = shard_model(scorer, self.device_mesh["data_parallel"])

    @override
    def train(self, mode: bool = True) -> PreferenceModule:
        super().train(mode)
        if self.reference is not None:
            self.reference.eval()  # the reference never runs in train mode (dropout, norms)
        return self

    # ---------------------------------------------------------------- the pair forward
    def score(self, model: nn.Module, batch: PairBatch, sequences: Sequences) -> PairLogps:
        """Summed log-probs (and token counts) of the targets named by ``sequences`` for every pair."""
        segments = [self.conditioning.segments(*p) for p in zip(batch.prompt, batch.chosen, batch.rejected)]
        rows = self.layout.build(segments, sequences, self.tokenizer.pad_token_id, self.device)
        scorer = self._scorers.get(id(model))
        sums = scorer(rows) if scorer is not None else target_logps(model, rows, self.hparams.logprob_chunk_size)
        counts = torch.bincount(rows.slot, minlength=rows.num_slots).view(rows.num_pairs, -1).float()
        col = {name: i for i, name in enumerate(rows.names)}
        return PairLogps(
            chosen=sums[:, col["chosen"]],
            rejected=sums[:, col["rejected"]],
            chosen_tokens=counts[:, col["chosen"]],
            rejected_tokens=counts[:, col["rejected"]],
            chosen_plain=sums[:, col["chosen_plain"]] if "chosen_plain" in col else None,
            rejected_plain=sums[:, col["rejected_plain"]] if "rejected_plain" in col else None,
            conditioned=sequences["chosen"] != REFERENCE_SEQUENCES["chosen"],
        )

    def reference_logps(self, batch: PairBatch) -> PairLogps | None:
        """log pi_ref(y|x) for both responses (always unconditioned), or None without a reference."""
        if self.reference_cache is not None:
            return self.reference_cache.lookup(batch, self.device)
        if self.reference_mode == "adapter":
            with torch.no_grad(), reference_adapter(self.policy) as reference:
                return self.score(reference, batch, REFERENCE_SEQUENCES)
        if self.reference is None:
            return None
        with torch.no_grad():
            return self.score(self.reference, batch, REFERENCE_SEQUENCES)

    def pair_logps(self, batch: PairBatch) -> tuple[PairLogps, PairLogps | None]:
        """The one pair forward: policy log-probs under the run's conditioning, and the reference's."""
        sequences = self.conditioning.policy_sequences
        if not self.loss.needs_plain_logps:  # InSPO: skip log pi(y|x) targets the loss never reads
            sequences = {name: segs for name, segs in sequences.items() if not name.endswith("_plain")}
        return self.score(self.policy, batch, sequences), self.reference_logps(batch)

    # ---------------------------------------------------------------- steps
    def _common_step(self, batch: PairBatch, stage: str) -> Tensor | None:
        policy, reference = self.pair_logps(batch)
        out = self.loss(policy, reference)
        loss = out.loss
        if stage == "train" and not torch.isfinite(loss):
            return self._nonfinite_loss(loss, batch)
        self._log_metrics(stage, out, policy, len(batch))
        return loss

    def _nonfinite_loss(self, loss: Tensor, batch: PairBatch) -> None:
        """Stop the run, or (``on_nonfinite: skip``) count the batch and return None: Lightning then skips it."""
        message = nonfinite_message(loss, self.global_step, batch.rows, self._trainer)
        if self.hparams.on_nonfinite == "error" or not skip_allowed(self._trainer):
            raise NonFiniteLossError(message)
        self.nonfinite_skipped += 1
        log.warning("inspo: %s; batch skipped (%d so far)", message.split("; ")[0], self.nonfinite_skipped)
        if self._trainer is not None:
            self.log("train/nonfinite_skipped", float(self.nonfinite_skipped), on_step=True, batch_size=len(batch))

    def _log_metrics(self, stage: str, out: LossOutput, policy: PairLogps, batch_size: int) -> None:
        values = {
            "loss": out.losses.detach(),
            "reward_accuracy": (out.chosen_rewards > out.rejected_rewards).float(),
            "reward_margin": out.chosen_rewards - out.rejected_rewards,
            "chosen_reward": out.chosen_rewards,
            "rejected_reward": out.rejected_rewards,
            "chosen_logp": policy.chosen.detach(),
            "rejected_logp": policy.rejected.detach(),
        }
        for name, value in values.items():
            metric = self.metrics[f"{stage}/{name}"]
            metric(value)  # forward: accumulates for the epoch and keeps this batch's value for on_step logging
            self.log(f"{stage}/{name}", metric, on_step=stage == "train", on_epoch=True, batch_size=batch_size,
                     prog_bar=name in PROGRESS_BAR)

    @override
    def training_step(self, batch: PairBatch, batch_idx: int) -> Tensor | None:
        return self._common_step(batch, "train")

    @override
    def validation_step(self, batch: PairBatch, batch_idx: int) -> None:
        self._common_step(batch, "val")

    @override
    def test_step(self, batch: PairBatch, batch_idx: int) -> None:
        self._common_step(batch, "test")

    @override
    def predict_step(self, batch: PairBatch, batch_idx: int) -> dict[str, Tensor]:
        policy, reference = self.pair_logps(batch)
        out = self.loss(policy, reference)
        return {"rows": torch.tensor(batch.rows), "loss": out.losses, "chosen_reward": out.chosen_rewards,
                "rejected_reward": out.rejected_rewards}

    @override
    def configure_optimizers(self) -> dict:
        # Not trainer.estimated_stepping_batches here: it builds the train dataloader before a checkpoint is restored
        # and Lightning then drops the loader's saved position. The schedule gets its length in on_train_start.
        return make_optimizer(self.policy, self.optim)

    @override
    def on_train_start(self) -> None:
        schedulers = [config.scheduler for config in self.trainer.lr_scheduler_configs]
        start_schedules(schedulers, int(self.trainer.estimated_stepping_batches))

    # ---------------------------------------------------------------- checkpoints and export
    @property
    def unsaved_prefixes(self) -> tuple[str, ...]:
        """State-dict key prefixes that checkpoints leave out (the frozen reference is rebuilt from its source)."""
        return ("reference.",)

    def check_resumable(self, checkpoint: dict[str, Any], source: Any = None) -> None:
        """Raise a :class:`ConfigError` if ``checkpoint`` was trained with another model or loss config."""
        saved = checkpoint.get("hyper_parameters")
        if not saved:
            return
        where = source if source is not None else (self._trainer.ckpt_path if self._trainer is not None else "?")
        for key in RESUME_KEYS:
            before, now = _plain(saved.get(key)), _plain(self.hparams.get(key))
            if key == "loss":  # checkpoints written before loss_hparams stored {"class": qualname, **args}
                before, now = _loss_identity(before), _loss_identity(now)
            if key == "lora" and isinstance(before, dict) and isinstance(now, dict):
                before, now = ({k: v for k, v in d.items() if k != "merge_on_export"} for d in (before, now))
            if before != now:
                raise ConfigError(f"cannot resume from {where}: it was trained with model.{key}={before!r}, this "
                                  f"run has model.{key}={now!r}; resume with the config it was trained with, or start "
                                  "a new run without --ckpt_path")

    @override
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.check_resumable(checkpoint)

    @override
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint["state_dict"]
        for key in [k for k in state if k.startswith("reference.")]:
            del state[key]
        if self.lora is not None:  # the frozen base is rebuilt from its source: keep the adapters only
            for key in adapter_state_keys(state):
                del state[key]

    @override
    def on_fit_end(self) -> None:
        if self.hparams.export_dir is None:
            return
        if any(getattr(callback, "requeued", False) for callback in self.trainer.callbacks):
            return  # stopped for a Slurm requeue: the next allocation goes on training and exports at its end
        out = self.export_path()  # on every rank: trainer.log_dir is a collective under DDP
        state = full_state_dict(self.policy) if is_sharded(self.policy) else None  # a collective under FSDP2
        if not self.trainer.is_global_zero:
            return
        from inspo.export import export_module, rebuild_policy

        policy = rebuild_policy(dict(self.hparams), state)[0] if state is not None else None
        export_module(self, out, policy=policy)
        log.info("inspo: trained policy written to %s", out)

    def export_path(self) -> Path:
        if self.hparams.export_dir != "auto":
            return Path(self.hparams.export_dir)
        return Path(self.trainer.log_dir or self.trainer.default_root_dir) / "hf_model"


def _plain(value: Any) -> Any:
    """``value`` as plain JSON-like data (dataclasses and namespaces as dicts, tuples as lists), for comparisons."""
    import dataclasses

    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    elif hasattr(value, "__dict__") and not isinstance(value, (str, int, float, bool, type(None))):
        value = dict(vars(value))
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def loss_hparams(loss: PreferenceLoss) -> dict[str, Any]:
    """``{"class_path": ..., "init_args": {...}}`` of a loss: its class and the scalar init arguments it keeps."""
    cls = type(loss)
    names = [p.name for p in inspect.signature(cls).parameters.values() if p.kind not in (p.VAR_POSITIONAL,
                                                                                           p.VAR_KEYWORD)]
    values = {name: getattr(loss, name) for name in names if hasattr(loss, name)}
    return {"class_path": f"{cls.__module__}.{cls.__qualname__}",
            "init_args": {k: v for k, v in values.items() if isinstance(v, (int, float, str, bool))}}


def _loss_identity(value: Any) -> Any:
    """``DPOLoss(beta=0.1, ...)`` for a saved loss in either shape, to compare a checkpoint with this run."""
    if not isinstance(value, dict):
        return value
    if "class_path" in value:
        name, args = str(value["class_path"]).rsplit(".", 1)[-1], dict(value.get("init_args") or {})
    else:
        name, args = value.get("class"), {k: v for k, v in value.items() if k not in ("class", "training")}
    return f"{name}({', '.join(f'{k}={v!r}' for k, v in sorted(args.items()))})"
