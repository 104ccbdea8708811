"""Reference modes (``model.reference``): where log pi_ref(y|x) comes from.

``copy`` (frozen copy of the initial policy), ``path`` (another checkpoint), ``adapter`` (a LoRA policy with its
adapters off), ``cached`` (computed once, stored on disk, no reference model during training), ``none``
(reference-free losses), and ``auto`` (resolved from the loss and the LoRA settings). ``base.py`` holds the
contract a new mode implements; ``modes.py`` the built-in modes; ``cache.py`` the on-disk cache.
"""

from inspo.reference.base import (
    REFERENCES,
    Loader,
    ReferenceData,
    ReferenceMode,
    Score,
    register_reference,
    resolve_reference,
)
from inspo.reference.cache import (
    ReferenceCache,
    cache_key,
    compute_reference_logps,
    dataset_fingerprint,
    load_cache,
    load_or_build,
    pair_key,
    save_cache,
    weights_hash,
)
from inspo.reference.modes import AdapterReference, CachedReference, CopyReference, NoReference, PathReference

__all__ = [
    "REFERENCES",
    "AdapterReference",
    "CachedReference",
    "CopyReference",
    "Loader",
    "NoReference",
    "PathReference",
    "ReferenceCache",
    "ReferenceData",
    "ReferenceMode",
    "Score",
    "cache_key",
    "compute_reference_logps",
    "dataset_fingerprint",
    "load_cache",
    "load_or_build",
    "pair_key",
    "register_reference",
    "resolve_reference",
    "save_cache",
    "weights_hash",
]
