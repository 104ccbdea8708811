"""Which token mixers a model has: the packed layout is exact only if every one of them is masked attention.

The packed layout (``inspo.layout``) isolates the branches of a row, e.g. y_w and y_l in ``[x | y_w | y_l]``, with
a 4D attention mask. Attention honours it; nothing else does. A state-space layer (Mamba, Mamba-2), a short
causal convolution (LFM2, the conv inside every Mamba block), linear attention (gated DeltaNet, Lightning
attention, ...) or a recurrent block (RG-LRU) mixes tokens by their place in the row, so y_l would read y_w
through the recurrent state. Hybrid models carry such layers next to attention: Falcon-H1, Jamba, Bamba,
Granite-4-H, Nemotron-H, Zamba, LFM2, Qwen3-Next, MiniMax, Kimi-Linear, OLMo-Hybrid, RecurrentGemma, ...

:func:`non_attention_mixer` names the first layer that is not masked attention, from three independent sources,
and says "unsupported" when it cannot tell (the caller then uses the always-exact ``separate`` layout):

1. the config: ``layer_types`` / ``layers_block_type`` / ``block_types`` entries other than full attention or a
   token-wise MLP / MoE; Nemotron-H's ``hybrid_override_pattern``; attention on only some layers
   (``attn_layer_indices``, ``attn_layer_period``, ``full_attn_idxs``); chunked attention;
2. the instantiated model's modules: a convolution in the decoder, or a module whose class name says mamba, ssm,
   mixer, recurrent, rnn, lstm, rwkv, retention, delta(net), linear / lightning attention, hyena;
3. the decoder layers: a layer with no attention module (and not declared MLP/MoE-only by the config), or a model
   whose decoder layers cannot be found.

``inspo.checks`` adds a run-time backstop for what no name reveals: on the first batch the packed log-probs of
one pair are compared with separate rows.
"""

from __future__ import annotations

import re
from typing import Any

from torch import nn

EXACT_LAYER_TYPES = frozenset({"full_attention", "attention", "global_attention", "mlp", "moe", "dense"})
"""Layer types a 4D mask keeps exact: full (global) masked attention, or no token mixing at all (MLP, MoE)."""
TOKENWISE_LAYER_TYPES = frozenset({"mlp", "moe", "dense"})
"""Layer types without any token mixing: such a layer legitimately has no attention module."""
LAYER_TYPE_FIELDS = ("layer_types", "layers_block_type", "block_types")
NEMOTRON_EXACT = frozenset("*-E")
"""Nemotron-H ``hybrid_override_pattern``: ``*`` attention, ``-`` MLP, ``E`` MoE; ``M`` is Mamba-2."""
MIXER_WORDS = frozenset({"mamba", "ssm", "mixer", "recurrent", "rglru", "rnn", "lstm", "mlstm", "slstm", "rwkv",
                         "retention", "delta", "deltanet", "lightning", "hyena"})
"""Words of class names (CamelCase split: ``JambaMambaMixer`` -> jamba, mamba, mixer) of token mixers that ignore an
attention mask. Whole words, so ``GptOssModel`` is not an "ssm" and GPT-2's ``Conv1D`` (a linear layer) is fine."""
MIXER_PHRASES = ("linearattention", "shortconv")
CAMEL_WORD = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|\d+")
ATTENTION_NAME = re.compile(r"attention|attn", re.IGNORECASE)


def non_attention_mixer(model_or_config: Any, sliding_ok: bool = False) -> str | None:
    """Why some token mixer of this model is not masked full attention, or None if every one is.

    Args:
        model_or_config: an instantiated model (config and modules are inspected) or an HF config (config only).
        sliding_ok: sliding-window attention layers count as attention (``inspo.prefix_attention`` bands them).
    """
    config = getattr(model_or_config, "config", model_or_config)
    for cfg in _configs(config):
        reason = _config_reason(cfg, EXACT_LAYER_TYPES | ({"sliding_attention"} if sliding_ok else set()))
        if reason is not None:
            return reason
    if isinstance(model_or_config, nn.Module):
        return _module_reason(model_or_config, config)
    return None


def _configs(config: Any) -> list[Any]:
    """The config and its text config (multimodal models keep the language model's fields there)."""
    out = [config]
    text = config.get_text_config() if hasattr(config, "get_text_config") else None
    if text is not None and text is not config:
        out.append(text)
    return out


def _field(config: Any, name: str) -> Any:
    """``config.name`` or None (some fields are properties derived from others and may raise when those are unset)."""
    try:
        return getattr(config, name, None)
    except Exception:  # noqa: BLE001 - any failure means the field says nothing
        return None


def _config_reason(config: Any, exact: frozenset[str] = EXACT_LAYER_TYPES) -> str | None:
    for field in LAYER_TYPE_FIELDS:
        types = _field(config, field)
        if isinstance(types, (list, tuple)):
            for i, kind in enumerate(types):
                if isinstance(kind, str) and kind not in exact:
                    return f"layer {i} is {kind!r} ({field}), not masked full attention"
    pattern = _field(config, "hybrid_override_pattern")
    if isinstance(pattern, str):
        for i, kind in enumerate(pattern):
            if kind not in NEMOTRON_EXACT:
                return f"layer {i} is {kind!r} in hybrid_override_pattern {pattern!r}, not attention or MLP"
    layers = _field(config, "num_hidden_layers")
    for field in ("attn_layer_indices", "full_attn_idxs"):
        indices = _field(config, field)
        if isinstance(indices, (list, tuple)) and isinstance(layers, int) and len(set(indices)) < layers:
            return f"only layers {sorted(indices)} are attention ({field}); the others mix tokens otherwise"
    period = _field(config, "attn_layer_period")
    if isinstance(period, int) and period > 1:
        return f"attention on every {period}th layer only (attn_layer_period); the others mix tokens otherwise"
    if _field(config, "attention_chunk_size"):
        return f"the model uses chunked attention ({config.attention_chunk_size}), which a custom 4D mask would drop"
    return None


def _module_reason(model: nn.Module, config: Any) -> str | None:
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else model
    decoder = decoder if isinstance(decoder, nn.Module) else model
    for name, module in decoder.named_modules():
        if isinstance(module, nn.modules.conv._ConvNd):
            return f"{name} ({type(module).__name__}) convolves over tokens"
        if _is_mixer_name(type(module).__name__):
            return f"{name} ({type(module).__name__}) mixes tokens without the attention mask"
    layers = _decoder_layers(decoder, config)
    if layers is None:
        return f"inspo cannot find the decoder layers of {type(model).__name__} to check their token mixers"
    types = next((t for f in LAYER_TYPE_FIELDS if isinstance(t := _field(config, f), (list, tuple))), None)
    for i, layer in enumerate(layers):
        tokenwise = types is not None and len(types) == len(layers) and types[i] in TOKENWISE_LAYER_TYPES
        if not tokenwise and not any(ATTENTION_NAME.search(type(m).__name__) for m in layer.modules()):
            return f"decoder layer {i} ({type(layer).__name__}) has no attention module: its token mixing is unknown"
    return None


def _is_mixer_name(name: str) -> bool:
    words = [w.lower() for w in CAMEL_WORD.findall(name)]
    return bool(MIXER_WORDS.intersection(words)) or any(p in "".join(words) for p in MIXER_PHRASES)


def _decoder_layers(decoder: nn.Module, config: Any) -> list[nn.Module] | None:
    """The decoder's layer stack: the child ModuleList with ``num_hidden_layers`` entries (``layers``, ``h``)."""
    count = _field(config, "num_hidden_layers")
    lists = [child for child in decoder.children() if isinstance(child, nn.ModuleList) and len(child) > 0]
    for stack in lists:
        if len(stack) == count:
            return list(stack)
    return list(lists[0]) if len(lists) == 1 else None
