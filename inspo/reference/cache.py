"""Reference cache (:class:`inspo.reference.CachedReference`): log pi_ref(y|x) of every pair computed once, stored.

The reference terms r_w = log pi_ref(y_w|x), r_l = log pi_ref(y_l|x) never change during training, and InSPO's
reference is unconditioned, so one cache serves every loss and both conditionings. The cache is computed before
training with a temporary reference model (the initial policy itself for copy semantics, or the mode's ``model``
loaded for the occasion and freed afterwards); training then never holds a reference model.

Key: a hash of (1) the dataset fingerprint: the token ids of every pair, which is what the dataset content, the
tokenizer, the chat template and the truncation settings produce, (2) the tokenisation settings themselves
(tokenizer, chat template, max lengths), (3) a hash of the reference weights, (4) dtype, attention implementation
and model class, and (5) the cache format version. Any change to any part gives a new file; the old one is
left for the runs that still match it. Within a file, entries are addressed by a per-pair hash of
(prompt, chosen, rejected) ids, so shuffling, splits and resumes look the same pairs up.

File: one JSON header line (key, sha256 and length of the payload) followed by a ``torch.save`` payload, written
to a temporary file in the same folder and renamed into place, so a crash never leaves a file that looks complete.
A file whose length, checksum, key or shapes do not match is reported in one log line and rebuilt.

DDP / FSDP: the cache is built before the model is wrapped or sharded. Global rank 0 builds and writes it, the
other ranks wait on a barrier and then read the same file, so the cache folder (``$INSPO_CACHE``, default
``~/.cache/inspo``) must be on a filesystem every rank sees. Each rank hashes its own copy of the initial weights,
so all ranks agree on the key. For datasets large enough to run past the barrier's timeout, build the cache first
with a one-device run (``--trainer.devices 1 --trainer.max_steps 0``) and then launch the distributed run: it hits.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from inspo.checks import check_exactness, full_logits_message, packed_message
from inspo.conditioning import REFERENCE_SEQUENCES
from inspo.errors import InspoError
from inspo.layout import Layout, SeparateLayout
from inspo.logprobs import target_logps
from inspo.losses import PairLogps
from inspo.models import cache_dir
from inspo.scoring import score_pairs

log = logging.getLogger("inspo")

CACHE_VERSION = 1


class Pair(Protocol):
    prompt: list[int]
    chosen: list[int]
    rejected: list[int]


def pair_key(prompt: Sequence[int], chosen: Sequence[int], rejected: Sequence[int]) -> int:
    """A 63-bit hash of one pair's token ids (lengths included, so segment boundaries count)."""
    digest = hashlib.blake2b(digest_size=8)
    for ids in (prompt, chosen, rejected):
        digest.update(len(ids).to_bytes(4, "little"))
        digest.update(torch.tensor(ids, dtype=torch.int64).numpy().tobytes())
    return int.from_bytes(digest.digest(), "little") >> 1


def dataset_fingerprint(pairs: Sequence[Pair]) -> str:
    """Hash of the set of pairs (order-free: shuffling or re-splitting the same pairs keeps the fingerprint)."""
    keys = sorted({pair_key(p.prompt, p.chosen, p.rejected) for p in pairs})
    return hashlib.sha256(torch.tensor(keys, dtype=torch.int64).numpy().tobytes()).hexdigest()


def weights_hash(model: nn.Module) -> str:
    """sha256 of every tensor of the model's state dict (name, dtype, shape and bytes)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def cache_key(parts: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps({"version": CACHE_VERSION, **parts}, sort_keys=True).encode()).hexdigest()[:32]


@dataclass
class ReferenceCache:
    """log pi_ref(y_w|x), log pi_ref(y_l|x) for a set of pairs, looked up by :func:`pair_key`.

    Attributes:
        keys: [N] int64 pair keys.
        logps: [N, 2] fp32 summed log-probs of (chosen, rejected).
    """

    keys: Tensor
    logps: Tensor

    def __post_init__(self) -> None:
        self._index = {k: i for i, k in enumerate(self.keys.tolist())}

    def __len__(self) -> int:
        return len(self._index)

    def lookup(self, batch: Any, device: torch.device | str = "cpu") -> PairLogps:
        """Reference log-probs of a :class:`~inspo.data.datamodule.PairBatch`, as the live reference returns them."""
        index = []
        for i, (x, yw, yl) in enumerate(zip(batch.prompt, batch.chosen, batch.rejected)):
            found = self._index.get(pair_key(x, yw, yl))
            if found is None:
                raise InspoError(f"data row {batch.rows[i]} is not in the reference cache: the cache was built for "
                                 "other data (pass the pairs to train on to the cache builder)")
            index.append(found)
        logps = self.logps[torch.tensor(index, dtype=torch.long)].to(device)
        counts = torch.tensor([[len(yw), len(yl)] for yw, yl in zip(batch.chosen, batch.rejected)],
                              dtype=torch.float32, device=device)
        return PairLogps(chosen=logps[:, 0], rejected=logps[:, 1], chosen_tokens=counts[:, 0],
                         rejected_tokens=counts[:, 1])


def compute_reference_logps(
    model: nn.Module, pairs: Sequence[Pair], pad_id: int, layout: Layout | None = None, batch_size: int = 8,
    chunk_size: int = 1024,
) -> ReferenceCache:
    """Run the reference over every pair once (eval mode, no grad) and return the cache contents.

    The first pair is checked first (:func:`inspo.checks.check_exactness`): a model whose forward transforms its
    logits is scored through its own forward, and packed rows that are not exact become separate rows.
    """
    layout = layout or SeparateLayout()
    device = next(model.parameters()).device
    full = False
    if pairs:
        first = {"x": pairs[0].prompt, "y_w": pairs[0].chosen, "y_l": pairs[0].rejected}
        result = check_exactness(model, lambda rows, full_logits: target_logps(model, rows, chunk_size, full_logits),
                                 first, REFERENCE_SEQUENCES, layout, pad_id, next(model.parameters()).dtype, device)
        if not result.logits_exact:
            log.warning(full_logits_message(model, result))
            full = True
        if not result.packed_exact:
            log.warning(packed_message(result))
            layout = SeparateLayout()
    was_training = model.training
    model.eval()
    out = []
    try:
        with torch.no_grad():
            for start in range(0, len(pairs), batch_size):
                chunk = pairs[start : start + batch_size]
                segments = [{"x": p.prompt, "y_w": p.chosen, "y_l": p.rejected} for p in chunk]
                logps = score_pairs(lambda rows: target_logps(model, rows, chunk_size, full_logits=full), segments,
                                    REFERENCE_SEQUENCES, layout, pad_id, device)
                out.append(torch.stack([logps.chosen, logps.rejected], dim=1).cpu())
    finally:
        model.train(was_training)
    keys = torch.tensor([pair_key(p.prompt, p.chosen, p.rejected) for p in pairs], dtype=torch.int64)
    logps = torch.cat(out) if out else torch.zeros((0, 2))
    return ReferenceCache(keys, logps)


def save_cache(path: Path, key: str, cache: ReferenceCache, parts: dict[str, Any]) -> None:
    """Write ``cache`` atomically: header + payload into a temporary sibling, fsync, rename."""
    buffer = io.BytesIO()
    torch.save({"keys": cache.keys, "logps": cache.logps}, buffer)
    payload = buffer.getvalue()
    header = {"version": CACHE_VERSION, "key": key, "bytes": len(payload), "pairs": len(cache.keys),
              "sha256": hashlib.sha256(payload).hexdigest(), "parts": parts}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(json.dumps(header).encode() + b"\n")
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_cache(path: Path, key: str) -> ReferenceCache | None:
    """The cache stored at ``path`` for ``key``; None if absent, or (after one log line) if it is corrupt."""
    if not path.is_file():
        return None
    try:
        with path.open("rb") as f:
            header = json.loads(f.readline())
            payload = f.read()
        if header.get("key") != key or header.get("version") != CACHE_VERSION:
            raise ValueError("its key does not match")
        if len(payload) != header["bytes"] or hashlib.sha256(payload).hexdigest() != header["sha256"]:
            raise ValueError(f"{len(payload)} payload bytes, checksum mismatch or truncated")
        data = torch.load(io.BytesIO(payload), weights_only=True)
        keys, logps = data["keys"], data["logps"]
        if keys.dtype != torch.int64 or logps.shape != (len(keys), 2) or len(keys) != header["pairs"]:
            raise ValueError("unexpected shapes")
    except (ValueError, KeyError, TypeError, RuntimeError, EOFError, UnicodeDecodeError) as err:
        log.warning("inspo: reference cache %s is corrupt or partial (%s); rebuilding it", path, err)
        return None
    return ReferenceCache(keys, logps.float())


def load_or_build(
    pairs: Sequence[Pair],
    reference: nn.Module | Callable[[], nn.Module],
    settings: dict[str, Any],
    pad_id: int,
    layout: Layout | None = None,
    folder: Path | None = None,
    is_global_zero: bool = True,
    barrier: Callable[[], None] | None = None,
) -> ReferenceCache:
    """Load the reference cache for ``pairs``, building it first if it is missing or corrupt.

    Args:
        pairs: every pair the run will score (train and validation).
        reference: the reference model, or a function that loads it (called once; the model is dropped afterwards).
        settings: tokenisation settings and anything else the key must include (JSON-serialisable).
        pad_id: the pad token id.
        layout: the layout used to compute the cache (packed and separate agree to 1e-5).
        folder: where cache files live; default ``<cache_dir()>/reference``.
        is_global_zero: whether this process builds the cache (others read it after ``barrier``).
        barrier: synchronises ranks under DDP/FSDP; None in a single process.
    """
    model = reference if isinstance(reference, nn.Module) else reference()
    parameter = next(model.parameters())
    parts = {
        **settings,
        "dataset": dataset_fingerprint(pairs),
        "weights": weights_hash(model),
        "dtype": str(parameter.dtype),
        "attn_implementation": getattr(model.config, "_attn_implementation", None),
        "model_class": type(model).__name__,
    }
    key = cache_key(parts)
    path = (folder or cache_dir() / "reference") / f"{key}.refcache"
    cache = None
    if is_global_zero:
        cache = load_cache(path, key)
        if cache is None:
            log.info("inspo: computing the reference log-probs of %d pairs once -> %s", len(pairs), path)
            cache = compute_reference_logps(model, pairs, pad_id, layout)
            save_cache(path, key, cache, parts)
        else:
            log.info("inspo: reference cache hit (%d pairs) %s", len(cache), path)
    del model  # a loaded reference is freed here: training never holds it
    if barrier is not None:
        barrier()
    if cache is None:
        cache = load_cache(path, key)
        if cache is None:
            raise InspoError(f"reference cache {path} written by rank 0 is not readable here: put $INSPO_CACHE on a "
                             "filesystem that every rank sees")
    return cache
