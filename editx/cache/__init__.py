"""Content-addressed prompt cache: keys, entries, and the memory → disk → shared tiers."""

from editx.cache.entry import CacheEntry, CorruptEntryError, decode_entry, encode_entry
from editx.cache.keys import fingerprint_files, prompt_key
from editx.cache.shared import RedisTier, SharedTier
from editx.cache.tiered import MISS, TIERS, TieredCache, default_cache_dir

__all__ = [
    "MISS",
    "TIERS",
    "CacheEntry",
    "CorruptEntryError",
    "RedisTier",
    "SharedTier",
    "TieredCache",
    "decode_entry",
    "default_cache_dir",
    "encode_entry",
    "fingerprint_files",
    "prompt_key",
]
