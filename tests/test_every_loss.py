"""Every registered loss name trains (issue 16: ``inspo fit --config configs/tiny.yaml --model.loss NAME``).

For each name of the LOSSES registry, aliases included (so a loss added later is covered by itself), under both
conditionings (the packed and separate layouts alternating over the names): the CLI's own parser builds the model, data and trainer of that command in-process (2 optimizer steps
of batch 2, no validation, samples, checkpoints or export, to keep the 40 fits cheap), the fit runs, and every loss
is finite and every trained tensor of the policy changed. One name also runs as a real ``inspo`` subprocess.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback

from inspo.cli import InspoCLI
from inspo.data.datamodule import PreferenceDataModule
from inspo.losses import LOSSES
from inspo.module import PreferenceModule
from tests.fit_runs import losses, run_fit, tail
from tests.helpers import TINY_YAML

NAMES = sorted([*LOSSES, *LOSSES.aliases])
LAYOUT = {name: ("packed", "separate")[i % 2] for i, name in enumerate(NAMES)}  # both layouts, at no extra cost
QUICK = ["--trainer.max_steps", "2", "--trainer.limit_val_batches", "0", "--samples.every_n_steps", "0",
         "--model.export_dir", "null", "--trainer.enable_checkpointing", "false", "--trainer.enable_progress_bar",
         "false", "--data.loader.batch_size", "2", "--data.read.max_pairs", "4"]


@pytest.fixture(scope="module", autouse=True)
def one_tokenizer():
    """The bundled tokenizer loaded once for the 40 fits (it is read-only; loading it is ~1/3 of a fit here)."""
    import functools

    import inspo.data.datamodule
    import inspo.module
    from inspo.models import load_tokenizer

    cached = functools.lru_cache(maxsize=None)(load_tokenizer)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(inspo.module, "load_tokenizer", cached)
        patch.setattr(inspo.data.datamodule, "load_tokenizer", cached)
        yield


class Watch(Callback):
    """Records the training losses and which trained tensors of the policy changed during the fit."""

    def __init__(self) -> None:
        self.losses: list[float] = []
        self.before: dict[str, torch.Tensor] = {}
        self.unchanged: list[str] = []

    def on_train_start(self, trainer, pl_module) -> None:
        self.before = {n: p.detach().clone() for n, p in pl_module.policy.named_parameters() if p.requires_grad}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))

    def on_train_end(self, trainer, pl_module) -> None:
        now = dict(pl_module.policy.named_parameters())
        self.unchanged = [n for n, before in self.before.items() if torch.equal(now[n].detach(), before)]


@pytest.mark.parametrize("conditioning", ["standard", "inspo"])
@pytest.mark.parametrize("name", NAMES)
def test_every_loss_name_trains(tmp_path: Path, name: str, conditioning: str) -> None:
    cli = InspoCLI(PreferenceModule, PreferenceDataModule, run=False,
                   args=["--config", str(TINY_YAML), "--trainer.default_root_dir", str(tmp_path),
                         "--trainer.logger.init_args.save_dir", str(tmp_path), "--model.loss", name,
                         "--model.conditioning", conditioning, "--model.layout", LAYOUT[name], *QUICK])
    assert type(cli.model.loss) is LOSSES.lookup(name)
    watch = Watch()
    cli.trainer.callbacks.append(watch)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert len(watch.losses) == 2 and all(math.isfinite(x) for x in watch.losses), watch.losses
    assert watch.before and not watch.unchanged, f"{name}: not trained: {watch.unchanged}"


def test_one_name_through_the_real_command(tmp_path: Path) -> None:
    """``inspo fit --config configs/tiny.yaml --model.loss aot_unpaired`` as a subprocess (TRL's name, a loss that
    sorts across the batch): it exits 0 after 2 finite steps."""
    result = run_fit(tmp_path, "--model.loss", "aot_unpaired", "--trainer.max_steps", "2",
                     "--trainer.enable_checkpointing", "false")
    assert result.returncode == 0, tail(result)
    recorded = losses(tmp_path)
    assert sorted(recorded) == [1, 2] and all(math.isfinite(x) for x in recorded.values())
