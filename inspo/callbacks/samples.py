"""Sample generations during training: a few fixed prompts, the policy's answers next to the reference's.

The policy generates from pi(y | x) alone, exactly as at inference: InSPO's alternative response exists only in
training and is never shown here. The reference column is generated once at the start of training (the reference
is frozen): the reference model, the LoRA base (adapters off) or, without a reference model (reference-free losses,
a cached reference), the policy as it was when training started.

Every table goes to ``samples.jsonl`` in the run folder (one line per prompt and step; ``inspo report`` plots the
response lengths from it), to TensorBoard as a markdown text table and to W&B as a table, when those loggers run.
Decoding is greedy, so two runs with the same weights print the same samples. The answers come from the generation
helper ``inspo eval`` uses (:func:`inspo.eval.generate.generate`), one prompt per call (no padding).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy, ModelParallelStrategy
from torch import nn
from typing_extensions import override

from inspo.errors import ConfigError
from inspo.eval.generate import generate
from inspo.run_folder import SAMPLES, run_dir

log = logging.getLogger("inspo")

SHARDED_STRATEGIES = (FSDPStrategy, ModelParallelStrategy, DeepSpeedStrategy)
DEFAULT_PROMPTS = (
    "Give three tips for staying healthy.",
    "Explain in two sentences why the sky is blue.",
    "Write a short, polite email declining a meeting invitation.",
)


class SampleGenerations(Callback):
    """Every ``every_n_steps`` optimizer steps (and at the end), generate from fixed prompts and log a table.

    Args:
        every_n_steps: optimizer steps between two tables; 0 disables sampling.
        prompts: the user messages to answer (the chat template is applied when the tokenizer has one);
            default: three short instructions.
        max_new_tokens: length cap of each generated response (greedy decoding).
    """

    def __init__(self, every_n_steps: int = 50, prompts: list[str] | None = None, max_new_tokens: int = 64) -> None:
        super().__init__()
        if every_n_steps < 0:
            raise ConfigError(f"samples.every_n_steps must be >= 0 (0 disables sampling), got {every_n_steps}")
        if max_new_tokens < 1:
            raise ConfigError(f"samples.max_new_tokens must be at least 1, got {max_new_tokens}")
        self.every_n_steps = every_n_steps
        self.prompts = list(prompts) if prompts else list(DEFAULT_PROMPTS)
        self.max_new_tokens = max_new_tokens
        self._reference: list[dict[str, Any]] | None = None
        self._reference_source = ""
        self._last_step = -1

    def _enabled(self, trainer: Trainer) -> bool:
        # A sharded model cannot generate on one rank alone (its weights are gathered collectively); DDP ranks
        # hold full copies, so rank 0 generates by itself.
        return self.every_n_steps > 0 and not isinstance(trainer.strategy, SHARDED_STRATEGIES)

    @override
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self._enabled(trainer) or not trainer.is_global_zero:
            return
        with pl_module.reference_mode.generation_model(pl_module.policy) as (model, source):
            self._reference_source = source
            self._reference = self._generate(model, pl_module)

    @override
    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step = trainer.global_step
        if step > 0 and step % max(self.every_n_steps, 1) == 0:
            self._sample(trainer, pl_module)

    @override
    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._sample(trainer, pl_module)

    def _sample(self, trainer: Trainer, pl_module: LightningModule) -> None:
        step = trainer.global_step
        folder = run_dir(trainer)
        if not self._enabled(trainer) or step == self._last_step or not trainer.is_global_zero:
            return
        self._last_step = step
        rows = []
        answers = self._generate(pl_module.policy, pl_module)
        for prompt, policy, reference in zip(self.prompts, answers, self._reference or [{}] * len(self.prompts)):
            rows.append({"step": step, "prompt": prompt, "policy": policy["text"], "policy_tokens": policy["tokens"],
                         "reference": reference.get("text"), "reference_tokens": reference.get("tokens"),
                         "reference_source": self._reference_source, "max_new_tokens": self.max_new_tokens})
        folder.mkdir(parents=True, exist_ok=True)
        with (folder / SAMPLES).open("a") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
        for logger in trainer.loggers:
            log_table(logger, rows, step)

    def _generate(self, model: nn.Module, pl_module: LightningModule) -> list[dict[str, Any]]:
        """Greedy answers of ``model`` to the prompts: text and length in tokens (up to the first EOS), one prompt
        per ``generate`` call, so that an answer does not depend on the other prompts' padding."""
        answers = generate(model, pl_module.tokenizer, self.prompts, max_new_tokens=self.max_new_tokens, batch_size=1)
        return [{"text": answer.text, "tokens": answer.tokens} for (answer,) in answers]


def markdown_table(rows: list[dict[str, Any]], width: int = 300) -> str:
    """The samples of one step as a markdown table (cells cut to ``width`` characters, pipes escaped)."""

    def cell(text: Any) -> str:
        text = "" if text is None else str(text)
        text = text if len(text) <= width else text[:width] + "..."
        return text.replace("|", "\\|").replace("\n", "<br>")

    lines = ["| prompt | policy | reference |", "|---|---|---|"]
    lines += [f"| {cell(r['prompt'])} | {cell(r['policy'])} | {cell(r['reference'])} |" for r in rows]
    return "\n".join(lines)


def log_table(logger: Any, rows: list[dict[str, Any]], step: int) -> None:
    """Send a samples table to a logger that can show one (TensorBoard text, W&B table); others get the file."""
    columns = ["step", "prompt", "policy", "reference", "policy_tokens", "reference_tokens"]
    try:
        if isinstance(logger, TensorBoardLogger):
            logger.experiment.add_text("samples", markdown_table(rows), global_step=step)
        elif isinstance(logger, WandbLogger):
            logger.log_text(key="samples", columns=columns, data=[[r[c] for c in columns] for r in rows], step=step)
    except (OSError, RuntimeError, ValueError, TypeError) as err:  # the samples file has the table anyway
        log.warning("inspo: could not log samples to %s: %s", type(logger).__name__, err)
