"""PreferenceModule: the policy, its frozen reference, one pair forward and one training step for every loss.

Logged metrics (``inspo.metrics`` explains each): ``{train,val,test}/{loss, reward_accuracy, reward_margin,
chosen_reward, rejected_reward, chosen_logp, rejected_logp}`` under the run's conditioning (under InSPO: the
cross-conditioned model log pi(y_w|x,y_l), log pi(y_l|x,y_w)); under InSPO also ``{val,test}/plain_{loss,
reward_accuracy, reward_margin, chosen_reward, rejected_reward}``: the run's loss on log pi(y|x) against log
pi_ref(y|x), the unconditioned model a user deploys (what a standard-conditioning evaluation reports). With an
InSPO mixing weight w < 1 (``--model.conditioning.weight``) ``loss`` is the mixed objective, the rest the InSPO view.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule
from torch import Tensor, nn
from typing_extensions import override

from inspo.checks import check_exactness, full_logits_message, packed_message
from inspo.conditioning import CONDITIONINGS, REFERENCE_SEQUENCES, Conditioning, ReflectionTemplate, Sequences
from inspo.data.datamodule import PairBatch
from inspo.distributed import LogpScorer, full_state_dict, is_sharded, shard_model
from inspo.errors import ConfigError
from inspo.guards import NonFiniteLossError, OnNonFinite, check_on_nonfinite, nonfinite_message, skip_allowed
from inspo.hparams import component_hparams, loss_hparams, resume_mismatch
from inspo.layout import LAYOUTS, Layout, SeparateLayout
from inspo.lean import use_lean_layers
from inspo.logprobs import target_logps
from inspo.lora import LoraSettings, adapter_state_keys, apply_lora
from inspo.loss_options import LossOptions
from inspo.losses import LOSSES, LossOutput, PairLogps, PreferenceLoss, WeightedLoss
from inspo.metrics import PLAIN_STAGES, PROGRESS_BAR, make_metrics, pair_metrics, plain_view
from inspo.models import (
    BUNDLED_SMOLLM2,
    check_checkpointing,
    disable_dropout,
    load_causal_lm,
    load_tokenizer,
    torch_dtype,
)
from inspo.optim import OptimConfig, check_precision, keeps_fp32_master, make_optimizer, start_schedules
from inspo.prefix_attention import choose_layout
from inspo.reference import CachedReference, PathReference, ReferenceData, ReferenceMode, resolve_reference
from inspo.run_folder import HF_MODEL
from inspo.scoring import score_pairs

log = logging.getLogger("inspo")


def resolve_loss(loss: PreferenceLoss | str | dict[str, Any] | list[Any],
                 weights: list[float] | None = None) -> PreferenceLoss:
    """A loss instance from an instance, a registered short name (``dpo``, ``simpo``, ...), the saved
    ``{"class_path", "init_args"}`` of :func:`loss_hparams` (``PreferenceModule.load_from_checkpoint``), or a list
    of those with ``weights``: their weighted sum (:class:`~inspo.losses.WeightedLoss`)."""
    if isinstance(loss, (list, tuple)):
        return WeightedLoss(list(loss), weights)
    if weights is not None:
        raise ConfigError(f"model.loss_weights is only read when model.loss is a list of losses (e.g. [dpo, sft]), "
                          f"but model.loss is {_loss_name(loss)!r}; drop the "
                          "weights (--model.loss_weights null)")
    return LOSSES.resolve(loss)


def _loss_name(loss: Any) -> str:
    """``dpo``, ``inspo.losses.DPOLoss`` or ``DPOLoss``: a single loss as the user gave it, for messages."""
    if isinstance(loss, dict):
        return str(loss.get("class_path"))
    return loss if isinstance(loss, str) else type(loss).__name__


class PreferenceModule(LightningModule):
    """A policy trained with a pairwise preference loss against a frozen reference.

    Args:
        model: the policy: an HF hub id, a local HF folder, a ``.gguf`` file, or ``bundled:SmolLM2-135M-Instruct``.
        loss: a registered loss name (``dpo``, ``ipo``, ``simpo``, ...), a loss given by ``class_path``, or a list
            of those, whose weighted sum is trained (``[dpo, sft]``: RPO; :class:`~inspo.losses.WeightedLoss`).
        loss_weights: with a list ``loss``: one weight >= 0 per loss (None: all 1.0), as TRL's ``loss_weights``.
        conditioning: ``inspo`` (log pi(y_w|x,y_l), log pi(y_l|x,y_w)) or ``standard`` (log pi(y|x)), or a
            :class:`~inspo.conditioning.Conditioning` given by ``class_path`` (``inspo.conditioning``).
        reflection_template: text around the alternative response under InSPO; default: raw concatenation.
        reference: where log pi_ref(y|x) comes from (``inspo.reference``): ``auto`` (``copy`` if the loss needs a
            reference, ``adapter`` with LoRA, else ``none``), ``copy`` (frozen copy of the initial policy), ``path``
            (another model: ``--model.reference path --model.reference.model NAME``), ``adapter``, ``cached``
            (log pi_ref(y|x) of every pair computed once and stored on disk; no reference model during training),
            ``none``, or a mode given by ``class_path``.
        reference_model: deprecated spelling of the reference mode's ``model`` (``reference: path`` or ``cached``
            with ``reference_model: X``): read as ``--model.reference.model X``, with one warning.
        layout: ``packed`` (one row per pair, prompt computed once, exact; falls back to ``separate`` with one log
            line when the attention implementation cannot take a 4D mask) or ``separate`` (one padded row per
            sequence), or a :class:`~inspo.layout.Layout` given by ``class_path``. The packed layout's
            ``max_tokens_per_row`` (token budget of a row holding several pairs as block-diagonal segments, which
            removes padding; default one pair per row): ``--model.layout packed
            --model.layout.max_tokens_per_row 512``, or in YAML ``layout: {class_path: packed, init_args:
            {max_tokens_per_row: 512}}``.
        dtype: parameter dtype of policy and reference: fp32, bf16 or fp16. Log-softmax is fp32 regardless. Trained
            weights must be fp32: for bf16 compute use ``trainer.precision: bf16-mixed`` (fp32 master weights, see
            ``inspo.optim``); bf16 / fp16 is for a frozen LoRA base, evaluation and prediction.
        attn_implementation: sdpa, eager, flex_attention, flash_attention_2, or None for the library default.
        random_init: config overrides for a randomly initialised policy (tests, benchmarks); None loads weights.
        disable_dropout: set every dropout to 0 in policy and reference (``nn.Dropout``, attention dropout in the HF
            config and the attention modules, LayerDrop), so the log-ratio is 0 at step 0 and log-probs are exact.
        logprob_chunk_size: target tokens per output-projection chunk (bounds the [tokens x vocab] logits).
        optim: optimizer and learning-rate schedule.
        export_dir: where ``fit`` writes the trained policy as a plain HF folder at its end; ``auto`` is
            ``<log_dir>/hf_model``; None writes nothing.
        lora: train low-rank adapters instead of every weight (``rank``, ``alpha``, ``dropout``,
            ``target_modules``, ``adapter`` to continue one, ``load_in_4bit`` for QLoRA); None trains all weights.
            With LoRA, ``reference: auto`` is ``adapter``: the same model with its adapters off (or, when
            continuing an adapter, a frozen copy of that adapter), no second model in memory.
        gradient_checkpointing: recompute decoder layers in backward (less activation memory, ~30% more compute);
            ``selective``: recompute only their element-wise work, keeping every matrix product's output (about
            half the activation memory, 8-15% more time on CPU; exact, see ``inspo.models.selective_checkpointing``).
        lean_layers: train the policy's RMSNorms and SwiGLU MLPs through autograd functions that keep fewer
            activations (same forward values; a third less activation memory for a Llama layer, no extra matrix
            FLOPs), each class checked against its own forward first (``inspo.lean``).
        trust_remote_code: allow models whose code lives in their hub repository (off: it runs that code).
        on_nonfinite: a NaN/inf training loss stops the run (``error``: step, data rows, last checkpoint) or
            skips the batch and counts it in ``train/nonfinite_skipped`` (``skip``; single process only).
        use_weighting: WPO (arXiv 2406.11827, TRL's ``use_weighting``): weight each pair's loss by the policy's
            length-normalised probability of both responses (``inspo.loss_options``); any loss.
        ld_alpha: LD-DPO (arXiv 2409.06411, TRL's ``ld_alpha``): weight, in [0, 1], of the log-probs of the longer
            response beyond the shorter one's length, for policy and reference (``inspo.loss_options``); None is off.
    """

    def __init__(
        self,
        model: str = BUNDLED_SMOLLM2,
        loss: PreferenceLoss | str | list[str | dict[str, Any]] = "dpo",
        loss_weights: list[float] | None = None,
        conditioning: Conditioning | str = "inspo",
        reflection_template: ReflectionTemplate | None = None,
        reference: ReferenceMode | str = "auto",
        reference_model: str | None = None,
        layout: Layout | str = "packed",
        dtype: str = "fp32",
        attn_implementation: str | None = "sdpa",
        random_init: dict[str, Any] | None = None,
        disable_dropout: bool = True,
        logprob_chunk_size: int = 1024,
        optim: OptimConfig | None = None,
        export_dir: str | None = "auto",
        lora: LoraSettings | None = None,
        gradient_checkpointing: bool | Literal["selective"] = False,
        lean_layers: bool = True,
        trust_remote_code: bool = False,
        on_nonfinite: OnNonFinite = "error",
        use_weighting: bool = False,
        ld_alpha: float | None = None,
    ) -> None:
        super().__init__()
        # Components are saved below by class path or short name (hparams.yaml cannot hold objects), and resolved
        # here, not when the model loads, so a typo fails before any data or weights are read. reference_model folds
        # into the reference mode.
        # loss_weights are saved inside the loss (a weighted sum's init args), not next to it.
        ignore = ["loss", "loss_weights", "conditioning", "layout", "reference_model"] + (
            [] if isinstance(reference, str) else ["reference"])
        self.save_hyperparameters(ignore=ignore)
        check_checkpointing(gradient_checkpointing)
        self.loss = resolve_loss(loss, loss_weights)
        self.conditioning = CONDITIONINGS.resolve(conditioning)  # set up with the tokenizer in configure_model
        self.layout = LAYOUTS.resolve(layout)
        self.hparams["loss"] = loss_hparams(self.loss)  # the shape LightningCLI parses back from a checkpoint
        self.hparams["conditioning"] = CONDITIONINGS.hparams(self.conditioning)  # a short name for stock ones
        self.hparams["layout"] = LAYOUTS.hparams(self.layout)
        self.reference_mode = resolve_reference(reference, self.loss.requires_reference, lora is not None)
        if reference_model is not None:  # the spelling before reference modes were classes
            if not isinstance(self.reference_mode, (PathReference, CachedReference)) or self.reference_mode.model:
                raise ConfigError(f"model.reference_model is only read by model.reference path or cached, as their "
                                  f"model: use --model.reference path --model.reference.model {reference_model}")
            log.warning("inspo: model.reference_model is deprecated: use --model.reference %s --model.reference.model "
                        "%s", self.reference_mode.name, reference_model)
            self.reference_mode.model = reference_model
        self.reference_mode.check(self.loss, lora)
        if not self.loss.requires_reference and self.reference_mode.name != "none":
            raise ConfigError(f"model.loss {LOSSES.name_of(type(self.loss)) or type(self.loss).__name__} reads no "
                              f"reference log-probs, so model.reference {self.reference_mode.name} would only cost "
                              "memory and time: leave model.reference at auto (none for this loss) or set it to none")
        self.loss_options = LossOptions(use_weighting, ld_alpha)  # applied around the loss in every step
        self.loss_options.check(self.reference_mode, self.loss)
        self.hparams["reference"] = component_hparams(self.reference_mode)  # the resolved mode, as the loss
        self.optim = optim or OptimConfig()
        torch_dtype(dtype)  # checked here too: before any data or weights are read
        check_on_nonfinite(on_nonfinite)
        self.nonfinite_skipped = 0
        # Keep the instances: under LightningCLI the saved hparams hold dataclasses as dicts.
        self.lora = lora
        self.reflection_template = reflection_template
        if logprob_chunk_size < 1:
            raise ConfigError(f"model.logprob_chunk_size must be >= 1, got {logprob_chunk_size}")
        self.policy: nn.Module | None = None
        self.reference: nn.Module | None = None  # the frozen model the reference mode holds, if any
        self.tokenizer = None
        self.metrics = make_metrics()  # every logged key: inspo.metrics
        # The reference is never saved: it is rebuilt from its source (``copy`` is taken before a checkpoint is
        # restored), so checkpoints hold the policy only and restoring them must not ask for reference weights.
        self.strict_loading = False
        self._scorers: dict[int, nn.Module] = {}  # id(model) -> its FSDP2 root unit (not a registered submodule)
        self._checked: set[int] = set()  # id(model): start-up exactness check done (inspo.checks)
        self._full_logits: set[int] = set()  # id(model): log-probs through model(...).logits (inspo.checks)

    # ---------------------------------------------------------------- models
    @override
    def setup(self, stage: str) -> None:
        if stage == "fit":
            self.loss.check_fit(self.trainer)
        if stage == "fit" and not keeps_fp32_master(self.trainer.strategy):  # before any weight is loaded
            check_precision(self.trainer.precision, torch_dtype(self.hparams.dtype), lora=self.lora is not None)

    @override
    def configure_model(self) -> None:
        if self.policy is not None:
            return
        hp = self.hparams
        self.tokenizer = load_tokenizer(hp.model, trust_remote_code=hp.trust_remote_code)
        self.conditioning.setup(self.tokenizer, self.reflection_template)
        load = {"dtype": hp.dtype, "attn_implementation": hp.attn_implementation,
                "trust_remote_code": hp.trust_remote_code, "gradient_checkpointing": hp.gradient_checkpointing,
                "load_in_4bit": self.lora is not None and self.lora.load_in_4bit}
        self.policy = load_causal_lm(hp.model, random_init=hp.random_init, **load)
        self.reference = self.reference_mode.build(self.policy, partial(load_causal_lm, **load))
        self.layout = choose_layout(self.layout, self.policy)  # packed: prefix attention where exact (issue 15)
        for m in (self.policy, self.reference):
            if m is not None and hp.disable_dropout:
                disable_dropout(m)
        if self.lora is not None:  # after the dropout loop: an explicit lora.dropout is kept
            self.policy = apply_lora(self.policy, self.lora, hp.gradient_checkpointing)
        if hp.lean_layers:  # after the reference is built from the policy: the reference keeps its own classes
            use_lean_layers(self.policy)
        # Before any training step: the initial weights (the cached mode builds its cache from them).
        plain_load = partial(load_causal_lm, dtype=hp.dtype, attn_implementation=hp.attn_implementation,
                             trust_remote_code=hp.trust_remote_code)
        data = ReferenceData.from_trainer(self._trainer, self.tokenizer.pad_token_id, self.layout, plain_load)
        self.reference_mode.prepare(self.policy, data)
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
    def score(self, model: nn.Module, batch: PairBatch, sequences: Sequences, conditioned: bool = False,
              log_sum_sq: bool = False) -> PairLogps:
        """Summed log-probs (and token counts) of the targets named by ``sequences`` for every pair.

        ``conditioned``: ``chosen`` / ``rejected`` of ``sequences`` see more than x (:class:`PairLogps`).
        ``log_sum_sq``: also WPO's per-response normaliser. With ``ld_alpha`` set, also the tail sums (LD-DPO).

        The first time a model scores, :func:`inspo.checks.check_exactness` checks the log-probs of one pair
        against the model's own forward (and packed against separate rows), and switches path if needed.
        """
        segments = [self.conditioning.segments(*p) for p in zip(batch.prompt, batch.chosen, batch.rejected)]
        if id(model) not in self._checked and segments:
            self._check_exactness(model, segments[0], sequences)
        full = id(model) in self._full_logits
        return score_pairs(lambda rows, **kw: self._scorer(model)(rows, full, **kw), segments, sequences,
                           self.layout, self.tokenizer.pad_token_id, self.device, conditioned=conditioned,
                           split_tail=self.loss_options.split_tail, log_sum_sq=log_sum_sq)

    def _scorer(self, model: nn.Module) -> Callable[..., Tensor]:
        """(rows, full_logits[, log_sum_sq]) -> summed target log-probs of ``model`` (through its FSDP2 root unit if
        sharded)."""
        sharded = self._scorers.get(id(model))
        if sharded is not None:
            return sharded
        return lambda rows, full, **kw: target_logps(model, rows, self.hparams.logprob_chunk_size, full_logits=full,
                                                     **kw)

    def _check_exactness(self, model: nn.Module, segments: dict[str, list[int]], sequences: Sequences) -> None:
        self._checked.add(id(model))
        result = check_exactness(model, self._scorer(model), segments, sequences, self.layout,
                                 self.tokenizer.pad_token_id, self._compute_dtype(model), self.device)
        if not result.logits_exact:
            log.warning(full_logits_message(model, result))
            self._full_logits.add(id(model))
        if not result.packed_exact:
            log.warning(packed_message(result, self.layout.name))
            self.layout = SeparateLayout()

    def _compute_dtype(self, model: nn.Module) -> torch.dtype:
        """The dtype ``model`` computes in outside autocast: its parameters', or FSDP1's mixed-precision copies'."""
        strategy = self._trainer.strategy if self._trainer is not None else None
        mixed = getattr(strategy, "mixed_precision_config", None)
        dtype = next(model.parameters()).dtype
        return mixed.param_dtype if mixed is not None and mixed.param_dtype is not None else dtype

    def reference_logps(self, batch: PairBatch) -> PairLogps | None:
        """log pi_ref(y|x) for both responses (always unconditioned), or None without a reference."""
        score = partial(self.score, batch=batch, sequences=REFERENCE_SEQUENCES)
        return self.reference_mode.logps(batch, self.policy, score, self.device)

    def pair_logps(self, batch: PairBatch, plain: bool = False) -> tuple[PairLogps, PairLogps | None]:
        """The one pair forward: policy log-probs under the run's conditioning, and the reference's.

        Under InSPO, log pi(y|x) (``chosen_plain`` / ``rejected_plain``) is computed when the loss reads it
        (``reads_plain_logps``) or when ``plain`` asks for it (validation and test log the unconditioned view, see
        ``inspo.metrics``); otherwise those targets are skipped.
        """
        mixes = self.conditioning.weight < 1  # the standard view's log pi(y|x) enters the loss
        sequences = self.conditioning.sequences(plain=plain or mixes or self.loss.reads_plain_logps)
        # The reference first (as TRL): its forward's buffers are gone before the policy's activations are kept.
        reference = self.reference_logps(batch)
        policy = self.score(self.policy, batch, sequences, conditioned=self.conditioning.conditioned,
                            log_sum_sq=self.loss_options.use_weighting)
        return policy, reference

    # ---------------------------------------------------------------- steps
    def _common_step(self, batch: PairBatch, stage: str) -> Tensor | None:
        policy, reference = self.pair_logps(batch, plain=stage in PLAIN_STAGES)
        out = self.mixed_loss(policy, reference)
        loss = out.loss
        if stage == "train" and not torch.isfinite(loss):
            return self._nonfinite_loss(loss, batch)
        counted = batch.counted()  # evaluation shards' repeats (several processes) weigh 0
        weight = None if counted is None else torch.tensor(counted, dtype=torch.float32, device=out.losses.device)
        self._log_metrics(stage, pair_metrics(out, policy), weight)
        plain = plain_view(policy) if stage in PLAIN_STAGES else None
        if plain is not None:  # InSPO: the same loss on log pi(y|x), what a standard evaluation reports
            self._log_metrics(stage, pair_metrics(self.loss_options.apply(self.loss, plain, reference)), weight,
                              plain=True)
        return loss

    def mixed_loss(self, policy: PairLogps, reference: PairLogps | None) -> LossOutput:
        """The loss under the run's conditioning, mixed by its ``weight`` w with the standard view's:
        ``w * L(policy) + (1 - w) * L(plain_view(policy))`` per pair (exactly one of them at w = 1 or 0). Rewards
        stay those of the run's conditioning, so only the logged ``loss`` is the mixture."""
        out, w = self.loss_options.apply(self.loss, policy, reference), self.conditioning.weight
        plain = plain_view(policy) if w < 1 else None
        if plain is not None:
            standard = self.loss_options.apply(self.loss, plain, reference).losses
            out.losses = standard if w == 0 else w * out.losses + (1 - w) * standard
        return out

    def _nonfinite_loss(self, loss: Tensor, batch: PairBatch) -> None:
        """Stop the run, or (``on_nonfinite: skip``) count the batch and return None: Lightning then skips it."""
        message = nonfinite_message(loss, self.global_step, batch.rows, self._trainer)
        if self.hparams.on_nonfinite == "error" or not skip_allowed(self._trainer):
            raise NonFiniteLossError(message)
        self.nonfinite_skipped += 1
        log.warning("inspo: %s; batch skipped (%d so far)", message.split("; ")[0], self.nonfinite_skipped)
        if self._trainer is not None:
            self.log("train/nonfinite_skipped", float(self.nonfinite_skipped), on_step=True, batch_size=len(batch))

    def _log_metrics(self, stage: str, values: dict[str, Tensor], weight: Tensor | None, plain: bool = False) -> None:
        """Log ``<stage>/<name>`` (``plain``: ``<stage>/plain_<name>``) for every per-pair value, pairs weighted by
        ``weight`` (None: all 1)."""
        for name, value in values.items():
            key = f"{stage}/plain_{name}" if plain else f"{stage}/{name}"
            metric = self.metrics[key]
            # forward: accumulates for the epoch and keeps this batch's value for on_step logging
            metric(value, 1.0 if weight is None else weight)
            self.log(key, metric, on_step=stage == "train", on_epoch=True, batch_size=len(value),
                     prog_bar=not plain and name in PROGRESS_BAR)

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
    def predict_step(self, batch: PairBatch, batch_idx: int, dataloader_idx: int = 0) -> dict[str, Tensor]:
        """Per pair: its row, loss, rewards and log-probs under the run's conditioning, the reference's log-probs, and
        under InSPO the loss, rewards and log-probs on log pi(y|x) (``plain_*``); ``inspo predict`` writes them
        (:class:`inspo.callbacks.PairScoreWriter`)."""
        policy, reference = self.pair_logps(batch, plain=True)
        scores = {"row": torch.tensor(batch.rows), **_pair_scores(self.mixed_loss(policy, reference), policy)}
        if reference is not None:
            scores |= {"ref_chosen_logp": reference.chosen, "ref_rejected_logp": reference.rejected}
        plain = plain_view(policy)
        if plain is not None:
            out = self.loss_options.apply(self.loss, plain, reference)
            scores |= {f"plain_{name}": value for name, value in _pair_scores(out, plain).items()}
        scores = {name: value.detach().float().cpu() if value.is_floating_point() else value
                  for name, value in scores.items()}
        counted = batch.counted()  # an evaluation shard's repeats (several processes) are written by another rank
        return scores if counted is None else {name: value[torch.tensor(counted)] for name, value in scores.items()}

    @override
    def configure_optimizers(self) -> dict:
        # Not trainer.estimated_stepping_batches here: it builds the train dataloader before a checkpoint is restored
        # and Lightning then drops the loader's saved position. The schedule gets its length in on_train_start.
        return make_optimizer(self.policy, self.optim, fp32_master=keeps_fp32_master(self.trainer.strategy))

    @override
    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        # Lightning calls this hook once per real optimizer step (never for accumulation micro-batches) and counts
        # the step only after it returns: this is update global_step + 1. Here, not in on_train_batch_end, so no
        # checkpoint or validation can see the new policy with the old reference (TR-DPO, inspo.reference.sync).
        self.reference_mode.after_optimizer_step(self.trainer.global_step + 1, self.policy)

    @override
    def on_train_start(self) -> None:
        schedulers = [config.scheduler for config in self.trainer.lr_scheduler_configs]
        start_schedules(schedulers, int(self.trainer.estimated_stepping_batches), self.trainer.is_global_zero)

    # ---------------------------------------------------------------- checkpoints and export
    @property
    def unsaved_prefixes(self) -> tuple[str, ...]:
        """State-dict key prefixes that checkpoints leave out (the frozen reference is rebuilt from its source)."""
        return self.reference_mode.unsaved_prefixes

    def check_resumable(self, checkpoint: dict[str, Any], source: Any = None) -> None:
        """Raise a :class:`ConfigError` if ``checkpoint`` was trained with another model or loss config."""
        saved = checkpoint.get("hyper_parameters")
        if not saved:
            return
        where = source if source is not None else (self._trainer.ckpt_path if self._trainer is not None else "?")
        mismatch = resume_mismatch(saved, self.hparams)
        if mismatch is not None:
            key, before, now = mismatch
            raise ConfigError(f"cannot resume from {where}: it was trained with model.{key}={before!r}, this run has "
                              f"model.{key}={now!r}; resume with the config it was trained with, or start a new run "
                              "without --ckpt_path")

    @override
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.check_resumable(checkpoint)

    @override
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint["state_dict"]
        for key in [k for k in state if k.startswith(self.unsaved_prefixes)]:
            del state[key]
        if self.lora is not None:  # the frozen base is rebuilt from its source: keep the adapters only
            for key in adapter_state_keys(state):
                del state[key]

    @override
    def on_fit_end(self) -> None:
        if self.hparams.export_dir is None:
            return
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
        return Path(self.trainer.log_dir or self.trainer.default_root_dir) / HF_MODEL


def _pair_scores(out: LossOutput, policy: PairLogps) -> dict[str, Tensor]:
    """Per pair: the loss, both rewards and both policy log-probs (``inspo predict``)."""
    return {"loss": out.losses, "chosen_reward": out.chosen_rewards, "rejected_reward": out.rejected_rewards,
            "chosen_logp": policy.chosen, "rejected_logp": policy.rejected}
