"""Export a trained policy as a plain Hugging Face folder that vLLM, AlpacaEval or ``from_pretrained`` can load.

The folder holds the weights (a merged model, or the LoRA adapter alone on request), the tokenizer with its chat
template, a generation config whose EOS and pad tokens match the tokenizer, and ``inspo_export.json``: the
training config, the data settings and the git commit of the code that trained it.

Two entry points: :func:`export_module` at the end of ``fit`` (the live policy), and :func:`export_checkpoint`
for ``inspo export --ckpt PATH --out DIR`` (rebuilds the policy from a Lightning checkpoint's hyperparameters;
a LoRA checkpoint holds the adapters only, the base is reloaded from its source in full precision). The checkpoint
is a ``.ckpt`` file, or the folder a sharded strategy writes (FSDP2's distributed checkpoint: one shard file per
rank and ``meta.pt``), read here in one process without any process group.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime
import json
import logging
import shutil
import subprocess
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn
from transformers import GenerationConfig, PreTrainedTokenizerBase

import inspo
from inspo.checkpoints import checkpoint_problem
from inspo.errors import ConfigError
from inspo.lora import REFERENCE_ADAPTER, TRAINED_ADAPTER, LoraSettings, apply_lora, is_lora, merged_model
from inspo.models import load_causal_lm, load_tokenizer
from inspo.preflight import check_output_folder
from inspo.run_folder import CONFIG, EXPORT_INFO, run_dir

log = logging.getLogger("inspo")


def export_policy(
    policy: nn.Module, tokenizer: PreTrainedTokenizerBase, out: Path, merge: bool = True,
    info: dict[str, Any] | None = None,
) -> Path:
    """Write ``policy`` (a HF model or a peft LoRA model) and ``tokenizer`` to ``out`` as a loadable HF folder.

    Args:
        policy: the trained model.
        tokenizer: its tokenizer (saved with the chat template).
        out: the folder to write: new, empty, or an earlier export (replaced as a whole: a stale adapter left
            beside merged weights is what ``from_pretrained`` would load). A folder with other files is refused.
        merge: for a LoRA policy, merge the trained adapter into the base (True) or save the adapter only.
        info: extra fields of ``inspo_export.json``.
    """
    check_output_folder("export folder", out)
    out = Path(out)
    if out.is_dir() and any(out.iterdir()):
        if not (out / EXPORT_INFO).is_file():
            raise ConfigError(f"export folder {out} is not empty and holds no earlier export (no {EXPORT_INFO}); "
                              "give a new or empty folder")
        log.info("inspo: export: replacing the earlier export in %s", out)
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    if is_lora(policy) and merge:
        model = merged_model(policy)
        kind = "merged"
    else:
        model = policy
        kind = "adapter" if is_lora(policy) else "full"
    if kind == "adapter":
        policy.save_pretrained(out, selected_adapters=[TRAINED_ADAPTER])
    else:
        model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    generation_config(model, tokenizer).save_pretrained(out)
    record = {"format": kind, "exported_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "inspo_version": inspo.__version__, "git": git_state(), **(info or {})}
    (out / EXPORT_INFO).write_text(json.dumps(jsonable(record), indent=2) + "\n")
    return out


def generation_config(model: nn.Module, tokenizer: PreTrainedTokenizerBase) -> GenerationConfig:
    """The model's generation config with the tokenizer's EOS (end of turn) and pad tokens added."""
    current = getattr(model, "generation_config", None)
    config = copy.deepcopy(current) if current is not None else GenerationConfig.from_model_config(model.config)
    eos = config.eos_token_id
    eos_ids = list(eos) if isinstance(eos, (list, tuple)) else ([] if eos is None else [eos])
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in eos_ids:
        eos_ids.append(tokenizer.eos_token_id)
    config.eos_token_id = eos_ids[0] if len(eos_ids) == 1 else eos_ids
    config.pad_token_id = tokenizer.pad_token_id
    if tokenizer.bos_token_id is not None:
        config.bos_token_id = tokenizer.bos_token_id
    return config


def export_module(module: Any, out: Path, merge: bool | None = None, policy: nn.Module | None = None) -> Path:
    """Export the live policy of a :class:`~inspo.module.PreferenceModule` (called at the end of ``fit``).

    ``policy``: a plain copy of the policy to write instead of ``module.policy`` (a sharded policy is gathered
    into one first, see ``PreferenceModule.on_fit_end``).
    """
    hp = module.hparams
    trainer = module._trainer
    folder = run_dir(trainer) if trainer is not None else None  # export runs on rank 0 only: no collectives
    datamodule = getattr(trainer, "datamodule", None) if trainer is not None else None
    info = {
        "source": "fit",
        "global_step": trainer.global_step if trainer is not None else None,
        "base_model": hp.model,
        "hparams": dict(hp),
        "data": {"hparams": dict(getattr(datamodule, "hparams", None) or {}),
                 "stats": getattr(datamodule, "stats", None)},
        "config": _read_yaml(folder / CONFIG) if folder is not None else None,
    }
    if merge is None:
        merge = module.lora.merge_on_export if module.lora is not None else True
    if merge and module.lora is not None and module.lora.load_in_4bit:
        # Merging into a 4-bit base would round the update away; never fail at the end of a long run for it.
        log.warning("inspo: QLoRA run: exporting the adapter only; merge it into a full-precision base with "
                    "`inspo export --ckpt CHECKPOINT --out DIR --merge`")
        merge = False
    return export_policy(policy if policy is not None else module.policy, module.tokenizer, out, merge=merge, info=info)


def rebuild_policy(hp: dict[str, Any], state: dict[str, torch.Tensor] | None = None) -> tuple[nn.Module, Any]:
    """The policy of a run with hyperparameters ``hp`` (full precision, on CPU), with ``state`` loaded if given.

    ``state`` holds the policy's keys without the ``policy.`` prefix; a LoRA run's state may hold the adapters only.
    Returns (policy, LoRA settings or None).
    """
    lora = hp.get("lora")
    if isinstance(lora, dict):
        lora = LoraSettings(**lora)
    trust = bool(hp.get("trust_remote_code", False))
    # Export runs on CPU in the training dtype, never 4-bit: a QLoRA adapter is merged into a full-precision base.
    policy = load_causal_lm(hp["model"], dtype=hp.get("dtype", "fp32"),
                            attn_implementation=hp.get("attn_implementation"), random_init=hp.get("random_init"),
                            trust_remote_code=trust)
    if lora is not None:
        policy = apply_lora(policy, dataclasses.replace(lora, load_in_4bit=False))
    if state is not None and lora is not None and REFERENCE_ADAPTER not in policy.peft_config:
        # TR-DPO's soft-updated reference adapter (inspo.reference.sync): the reference, not the policy
        state = {k: v for k, v in state.items() if not ("lora_" in k and REFERENCE_ADAPTER in k.split("."))}
    if state is not None:
        result = policy.load_state_dict(state, strict=False)
        missing = [k for k in result.missing_keys if (lora is None or "lora_" in k) and k not in _tied_keys(policy)]
        if result.unexpected_keys or missing:
            raise ConfigError(f"the checkpoint does not match model {hp['model']!r}: missing {missing[:3]}, "
                              f"unexpected {result.unexpected_keys[:3]}")
    return policy, lora


def _tied_keys(model: nn.Module) -> set[str]:
    """State-dict keys that share their tensor with an earlier key (a tied output projection)."""
    seen: dict[int, str] = {}
    tied = set()
    for key, value in model.state_dict(keep_vars=True).items():
        if id(value) in seen:
            tied.add(key)
        seen.setdefault(id(value), key)
    return tied


def read_checkpoint(ckpt: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(everything but the weights, the policy's weights without the ``policy.`` prefix) of a checkpoint of
    ``inspo fit``: a ``.ckpt`` file or a sharded checkpoint folder."""
    from inspo.distributed import CHECKPOINT_META

    if ckpt.is_dir() and not (ckpt / CHECKPOINT_META).is_file():
        raise ConfigError(f"{ckpt} is a folder but not a sharded checkpoint of `inspo fit` (no {CHECKPOINT_META})")
    if not ckpt.exists():
        raise ConfigError(f"checkpoint not found: {ckpt}")
    problem = checkpoint_problem(ckpt)  # truncated, not a checkpoint, a shard missing: torch's traceback before
    if problem is not None:
        raise ConfigError(f"{ckpt}: {problem}")
    if ckpt.is_dir():
        meta = torch.load(ckpt / CHECKPOINT_META, map_location="cpu", weights_only=False)
        return meta, _read_sharded_policy(ckpt)
    checkpoint = torch.load(ckpt, map_location="cpu", weights_only=False)
    weights = checkpoint.pop("state_dict", {})
    state = {k.removeprefix("policy."): v for k, v in weights.items() if k.startswith("policy.")}
    return checkpoint, state


def _read_sharded_policy(folder: Path) -> dict[str, torch.Tensor]:
    """The full ``policy.*`` tensors of a distributed-checkpoint folder, read in this process (no process group)."""
    from torch.distributed.checkpoint import FileSystemReader, load
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    reader = FileSystemReader(str(folder))
    prefix = "state_dict.policy."
    entries = {k: v for k, v in reader.read_metadata().state_dict_metadata.items()
               if k.startswith(prefix) and isinstance(v, TensorStorageMetadata)}
    state = {k.removeprefix("state_dict."): torch.empty(v.size, dtype=v.properties.dtype) for k, v in entries.items()}
    if state:
        load({"state_dict": state}, storage_reader=reader, no_dist=True)
    return {k.removeprefix("policy."): v for k, v in state.items()}


def export_checkpoint(ckpt: str | Path, out: str | Path, merge: bool | None = None) -> Path:
    """Rebuild the policy saved in a Lightning checkpoint of ``inspo fit`` and export it to ``out``.

    Args:
        ckpt: a ``.ckpt`` file written by ``inspo fit``, or a sharded checkpoint folder (FSDP2).
        out: the HF folder to write.
        merge: LoRA only: merge the adapter (default: the run's ``lora.merge_on_export``).
    """
    ckpt = Path(ckpt)
    checkpoint, state = read_checkpoint(ckpt)
    hp = checkpoint.get("hyper_parameters")
    if not hp or "model" not in hp:
        raise ConfigError(f"{ckpt} is not a checkpoint of `inspo fit` (no model hyperparameters in it)")
    if not state:
        raise ConfigError(f"{ckpt} holds no policy weights")
    tokenizer = load_tokenizer(hp["model"], trust_remote_code=bool(hp.get("trust_remote_code", False)))
    try:
        policy, lora = rebuild_policy(hp, state)
    except ConfigError as err:
        raise ConfigError(f"{ckpt}: {err}") from None
    if merge is None:
        merge = lora.merge_on_export if lora is not None else True
    info = {"source": str(ckpt), "global_step": checkpoint.get("global_step"), "base_model": hp["model"],
            "hparams": dict(hp),
            "data": {"hparams": dict(checkpoint.get("datamodule_hyper_parameters") or {}), "stats": None},
            "config": _read_yaml(ckpt.resolve().parent.parent / CONFIG)}
    return export_policy(policy, tokenizer, Path(out), merge=merge, info=info)


def git_state() -> dict[str, Any]:
    """Commit and dirty flag of the git checkout holding the inspo package (None outside a checkout)."""
    where = Path(inspo.__file__).resolve().parent

    def git(*args: str) -> str | None:
        try:
            result = subprocess.run(["git", *args], cwd=where, capture_output=True, text=True, timeout=10, check=False)
        except (OSError, subprocess.SubprocessError):
            return None
        return result.stdout.strip() if result.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def jsonable(value: Any) -> Any:
    """``value`` with dataclasses, paths, tuples and other objects turned into JSON types (str as the fallback)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return jsonable(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [jsonable(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def _read_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text()) if path.is_file() else None


def main(argv: list[str]) -> None:
    """``inspo export --ckpt PATH --out DIR [--merge | --no-merge]``."""
    parser = argparse.ArgumentParser(prog="inspo export", description="Export a checkpoint of `inspo fit` as a plain "
                                     "Hugging Face folder (weights, tokenizer, chat template, generation config, "
                                     f"{EXPORT_INFO}).")
    parser.add_argument("--ckpt", required=True,
                        help="a .ckpt file or a sharded checkpoint folder written by `inspo fit`")
    parser.add_argument("--out", required=True, help="the folder to write")
    parser.add_argument("--merge", action=argparse.BooleanOptionalAction, default=None,
                        help="LoRA runs: merge the adapter into the base (default: the run's lora.merge_on_export)")
    args = parser.parse_args(argv)
    check_output_folder("--out", args.out)  # before the checkpoint is read
    out = export_checkpoint(args.ckpt, args.out, merge=args.merge)
    print(f"inspo: exported {args.ckpt} -> {out}")
