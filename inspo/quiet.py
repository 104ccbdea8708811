"""Silence, for the duration of one ``inspo`` command, what libraries print that is not the user's business.

A first ``inspo fit`` used to print a litlogger advertisement, deprecation warnings from inside Lightning and torch,
"Found 397 module(s) in eval mode" (the frozen reference is in eval mode on purpose), progress bars of every
``save_pretrained``, and Lightning's "`Trainer.fit` stopped: `max_epochs=1` reached" (the run's own summary says
when and why it ended). :func:`quiet_run` filters exactly these while the command runs and restores everything
afterwards: nothing is changed at import time, and a program that imports ``inspo`` sees every warning as before.
``INSPO_VERBOSE=1`` keeps them all.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import warnings
from collections.abc import Iterator

NOISE = re.compile(r"💡 Tip:"  # litlogger / litmodels advertisements
                   r"|`Trainer\.fit` stopped:"  # the end-of-fit summary says it
                   r"|`Trainer\(limit_\w+=.*\)` was configured")  # echoes an option the user set
"""Log messages from Lightning that are dropped."""
LIBRARIES = r"(lightning|lightning_fabric|pytorch_lightning|torch|torchmetrics|transformers|jsonargparse|peft)(\.|$)"
WARNINGS = [
    {"message": r".*module\(s\) in eval mode"},  # the frozen reference, on purpose
    {"category": DeprecationWarning, "module": LIBRARIES},  # a library's own use of a deprecated API
    {"category": FutureWarning, "module": LIBRARIES},
    {"message": r".*isinstance\(treespec, LeafSpec\)"},  # torch deprecation raised inside Lightning
    {"message": r"The dirpath has changed from"},  # a checkpoint of another version folder: a new version is documented
]
LOGGERS = ("", "lightning", "lightning.pytorch", "lightning.fabric", "lightning_fabric", "pytorch_lightning")
"""Loggers whose handlers get the filter (Lightning's own loggers have handlers and do not propagate)."""


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return NOISE.search(record.getMessage()) is None


@contextlib.contextmanager
def quiet_run() -> Iterator[None]:
    """Filter the library noise listed above while the block runs (a no-op with ``INSPO_VERBOSE=1``)."""
    if os.environ.get("INSPO_VERBOSE"):
        yield
        return
    noise = _DropNoise()
    handlers = {id(h): h for name in LOGGERS for h in logging.getLogger(name).handlers}.values()
    for handler in handlers:
        handler.addFilter(noise)
    bars = _hf_progress_bars(False)
    try:
        with warnings.catch_warnings():
            for rule in WARNINGS:
                warnings.filterwarnings("ignore", **rule)
            yield
    finally:
        for handler in handlers:
            handler.removeFilter(noise)
        _hf_progress_bars(bars)


def _hf_progress_bars(enable: bool | None) -> bool | None:
    """Turn transformers' progress bars on or off (None: leave them); returns whether they were on."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:
        return None
    was = hf_logging.is_progress_bar_enabled()
    if enable is True:
        hf_logging.enable_progress_bar()
    elif enable is False:
        hf_logging.disable_progress_bar()
    return was
