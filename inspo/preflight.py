"""Checks the CLI runs on the parsed config before anything is built: output folders, strategy, data paths, loggers;
and, before parsing, the ``--config`` files themselves.

Each failure is a :class:`~inspo.errors.ConfigError` naming the option and the path, raised before any data is read,
any model is loaded or any step is trained (before this, a ``model.export_dir`` that is a file crashed the export
after the whole run had trained, and an unknown strategy or a ``default_root_dir`` that is a file ended in a
traceback). Also here: the logger folder follows ``trainer.default_root_dir`` unless it is set explicitly.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
from pathlib import Path
from typing import Any

import yaml
from jsonargparse import Namespace

from inspo.errors import ConfigError, InspoError
from inspo.run_folder import EXPORT_INFO

SUBCOMMANDS = ("fit", "validate", "test", "predict")
LOGGER_PACKAGES = {"WandbLogger": "wandb", "TensorBoardLogger": "tensorboard", "MLFlowLogger": "mlflow",
                   "CometLogger": "comet_ml", "NeptuneLogger": "neptune"}
"""Logger class -> the package it needs (not a dependency of inspo): checked by :func:`check_logger_packages`."""


def _items(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def logger_specs(logger: Any) -> list[Any]:
    """The ``class_path`` / ``init_args`` namespaces of a parsed ``trainer.logger`` value (a bool, None, one or a
    list)."""
    return [item for item in _items(logger) if hasattr(item, "get") and item.get("class_path")]


def _default_save_dir(class_path: str) -> Any:
    """The logger class's own default for ``save_dir`` (W&B: ``.``), or None."""
    module, _, name = class_path.rpartition(".")
    try:
        parameter = inspect.signature(getattr(importlib.import_module(module), name)).parameters.get("save_dir")
    except (ImportError, AttributeError, TypeError, ValueError):
        return None
    return None if parameter is None or parameter.default is inspect.Parameter.empty else parameter.default


def follow_root_dir(config: Any) -> None:
    """Put every configured logger without an explicit ``save_dir`` under ``trainer.default_root_dir``, in place.

    ``config`` is a parsed config, with or without the subcommand level. The shipped configs name no ``save_dir``,
    so ``--trainer.default_root_dir X`` moves the whole run (logs, checkpoints, the HF folder) to ``X``;
    ``--trainer.logger.init_args.save_dir Y`` (or a ``save_dir`` in a config file) still wins. A W&B logger's own
    default (``.``) counts as not set.
    """
    trainers = [config.get("trainer")] + [config.get(sub, {}).get("trainer") for sub in SUBCOMMANDS
                                          if hasattr(config.get(sub), "get")]
    for trainer in filter(None, trainers):
        root = trainer.get("default_root_dir") or os.getcwd()
        for spec in logger_specs(trainer.get("logger")):
            init = spec.get("init_args")
            if init is None:
                spec["init_args"] = init = Namespace()
            if init.get("save_dir") is None or init.get("save_dir") == _default_save_dir(str(spec["class_path"])):
                init["save_dir"] = str(root)


def check_output_folder(option: str, path: Any) -> None:
    """``path`` (given as ``option``) must be a folder or not exist yet, under a writable parent (URLs pass)."""
    if path is None or (isinstance(path, str) and "://" in path):
        return
    path = Path(path)
    if path.is_file():
        raise ConfigError(f"{option} {path} is a file, not a folder; give a folder path")
    for parent in path.parents:  # the first existing ancestor must be a folder that can be written
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(f"{option} {path}: {parent} is a file, not a folder")
            if not os.access(parent, os.W_OK):
                raise ConfigError(f"{option} {path}: {parent} is not writable")
            return


def check_output_folders(trainer: Any, model: Any, checkpoint: Any) -> None:
    """``trainer.default_root_dir``, each logger's ``save_dir``, ``checkpoint.dirpath`` and ``model.export_dir``
    must be folders (or not exist yet) under a writable parent."""
    check_output_folder("trainer.default_root_dir", trainer.get("default_root_dir"))
    for spec in logger_specs(trainer.get("logger")):
        check_output_folder("trainer.logger save_dir", (spec.get("init_args") or {}).get("save_dir"))
    if checkpoint is not None:
        check_output_folder("checkpoint.dirpath", checkpoint.get("dirpath"))
    export = model.get("export_dir") if model is not None else None
    if export not in (None, "auto"):
        check_output_folder("model.export_dir", export)
        if Path(export).is_dir() and any(Path(export).iterdir()) and not (Path(export) / EXPORT_INFO).is_file():
            raise ConfigError(f"model.export_dir {export} is not empty and holds no earlier export (no {EXPORT_INFO}); "
                              "give a new or empty folder (an earlier export there is replaced)")


def check_strategy(strategy: Any) -> None:
    """A ``trainer.strategy`` string must be ``auto`` or a registered strategy name."""
    if not isinstance(strategy, str):
        return
    from lightning.pytorch.strategies import StrategyRegistry

    names = ["auto", *StrategyRegistry.available_strategies()]
    if strategy not in names:
        common = ", ".join(n for n in names if "_find_unused" not in n and "xla" not in n and "tpu" not in n)
        raise ConfigError(f"trainer.strategy {strategy!r} is not a strategy; choose one of: {common} (or add "
                          "--config configs/strategy/ddp.yaml, fsdp.yaml or fsdp2.yaml)")


def check_trainer_counts(trainer: Any) -> None:
    """The trainer's step and epoch intervals that Lightning takes unchecked must be positive: at 0 it divides by
    them (a ZeroDivisionError, for ``val_check_interval`` after the first training batch), and a negative
    ``accumulate_grad_batches`` trained without a word."""
    for name in ("accumulate_grad_batches", "check_val_every_n_epoch"):
        value = trainer.get(name)
        if isinstance(value, int) and value < 1:
            raise ConfigError(f"trainer.{name} must be at least 1, got {value}")
    interval = trainer.get("val_check_interval")
    if isinstance(interval, (int, float)) and interval <= 0:
        raise ConfigError(f"trainer.val_check_interval must be > 0 (training batches as an int, a fraction of the "
                          f"epoch as a float), got {interval}")


def check_data_paths(data: Any) -> None:
    """``data.source.path`` / ``data.source.val_path``: a missing file stops the run before anything is built (a
    missing ``val_path`` was found only after the training file had been read), and a folder is named as a folder."""
    source = data.get("source") if data is not None else None
    if source is None or (source.get("path") is not None and source.get("dataset") is not None):
        return  # DataSource refuses a path and a dataset together, with its own message
    for option in ("path", "val_path"):
        value = source.get(option)
        if not isinstance(value, str) or value.startswith("bundled:"):
            continue
        name = f"data.source.{option}"
        if not Path(value).exists():
            raise ConfigError(f"{name}: data file not found: {value}")
        if Path(value).is_dir():
            shards = sorted(p.name for p in Path(value).iterdir() if p.suffix in (".jsonl", ".json", ".parquet"))
            if not shards:
                raise ConfigError(f"{name} {value} is a folder, not a data file, and holds no .jsonl, .json or "
                                  ".parquet file")
            listed = ", ".join(shards[:3]) + (", ..." if len(shards) > 3 else "")
            how = f"--data.source.dataset {value}" if option == "path" else "one file (concatenate the shards)"
            raise ConfigError(f"{name} {value} is a folder, not a data file (it holds {len(shards)} data "
                              f"files: {listed}); {name} reads one file: for a folder of shards use {how}")


class _UniqueKeyLoader(yaml.SafeLoader):
    """A YAML loader that refuses a key given twice in one mapping (PyYAML keeps the last one without a word)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        lines: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, (str, int, float, bool)) and key in lines:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} given twice (also on line {lines[key]}): the second would silently "
                    "replace the first, with every option under it", key_node.start_mark)
            lines[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def check_config_files(argv: list[str]) -> None:
    """Each ``--config`` / ``-c`` file on the command line exists, is a file and holds a YAML mapping of options in
    which no key is given twice.

    jsonargparse answered a missing file or a folder with "config: invalid value", named neither the file nor the
    line of a YAML syntax error, and let a repeated key replace the first (a second ``model:`` block dropped every
    option of the first). A value that is not a path but an inline YAML mapping (``--config '{model: ...}'``) is
    left to jsonargparse.
    """
    for index, arg in enumerate(argv):
        if arg in ("--config", "-c") and index + 1 < len(argv):
            value = argv[index + 1]
        elif arg.startswith("--config="):
            value = arg.partition("=")[2]
        else:
            continue
        path = Path(value)
        if not path.exists():
            try:
                inline = yaml.safe_load(value)
            except yaml.YAMLError:
                inline = value
            if isinstance(inline, str):
                raise ConfigError(f"--config {value}: file not found")
            continue
        if path.is_dir():
            raise ConfigError(f"--config {value} is a folder, not a YAML file")
        try:
            loaded = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)
        except yaml.MarkedYAMLError as err:
            mark = err.problem_mark
            raise ConfigError(f"--config {value}: invalid YAML at line {mark.line + 1}, column {mark.column + 1}: "
                              f"{err.problem}") from None
        except (yaml.YAMLError, UnicodeDecodeError) as err:
            raise ConfigError(f"--config {value}: not a readable YAML file: {err}") from None
        if not isinstance(loaded, dict):
            got = "nothing (an empty file)" if loaded is None else f"a {type(loaded).__name__}"
            raise ConfigError(f"--config {value}: expected a mapping of options (model:, data:, trainer:, ...), "
                              f"got {got}")


def user_error_in(err: BaseException) -> InspoError | None:
    """The :class:`InspoError` that caused ``err`` (jsonargparse wraps errors raised by the classes it builds)."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, InspoError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def check_logger_packages(logger: Any) -> None:
    """Raise one clear :class:`ConfigError` if a configured logger's package is not installed.

    ``logger`` is the parsed ``trainer.logger`` value: a bool, None, a ``class_path`` namespace or a list of them.
    """
    for item in logger if isinstance(logger, list) else [logger]:
        class_path = item.get("class_path") if hasattr(item, "get") else None
        if not class_path:
            continue
        name = str(class_path).rsplit(".", 1)[-1]
        package = LOGGER_PACKAGES.get(name)
        if package == "tensorboard" and importlib.util.find_spec("tensorboardX") is not None:
            continue
        if package is not None and importlib.util.find_spec(package) is None:
            raise ConfigError(f"trainer.logger {name} needs the {package!r} package, which is not installed: "
                              f"pip install {package} (or use the default CSV logger, which needs no account)")
