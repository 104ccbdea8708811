"""The ``inspo`` command: LightningCLI over PreferenceModule and PreferenceDataModule.

``inspo fit --config configs/quickstart.yaml`` trains; ``validate``, ``test`` and ``predict`` work the same way.
Configs combine left to right: ``--config configs/quickstart.yaml --config configs/loss/simpo.yaml``.
Errors a user can cause (bad data, bad config, missing files) print one line and exit with status 2; set
``INSPO_DEBUG=1`` for the full traceback.
"""

from __future__ import annotations

import logging
import os
import sys

from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from inspo.data.datamodule import PreferenceDataModule
from inspo.errors import InspoError
from inspo.module import PreferenceModule


class InspoCLI(LightningCLI):
    """LightningCLI with the tokenizer linked to the model: ``--model.model X`` sets ``--data.tokenizer X``."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("model.model", "data.tokenizer")


def main(args: list[str] | None = None) -> None:
    """Run the CLI on ``args`` (default: ``sys.argv[1:]``)."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        InspoCLI(
            PreferenceModule,
            PreferenceDataModule,
            seed_everything_default=42,
            save_config_kwargs={"overwrite": True},
            args=args,
        )
    except InspoError as err:
        if os.environ.get("INSPO_DEBUG"):
            raise
        print(f"inspo: error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
