"""Content/config-derived identifiers and per-item random generators (never time, order or hash())."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def stable_id(*parts: object, length: int = 20) -> str:
    """A short hex id from the parts' text (joined with a separator that cannot occur in them)."""
    h = hashlib.sha256("\x1f".join(str(p) for p in parts).encode("utf-8")).hexdigest()
    return h[:length]


def hash_patient(source: str, patient_id: str) -> str:
    """One-way patient pseudonym, stable per source (raw ids never reach an output)."""
    return "p" + stable_id("patient", source, patient_id, length=16)


def derived_rng(seed: int, *parts: object) -> np.random.Generator:
    """The generator for one item: a pure function of the release seed and the item's identity."""
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode("utf-8")).digest()
    words = [int.from_bytes(digest[i : i + 4], "little") for i in range(0, 16, 4)]
    return np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, *words]))


def unit_interval(*parts: object) -> float:
    """A deterministic number in [0, 1) from the parts (for hash-based split assignment)."""
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while True:
            block = fh.read(chunk)
            if not block:
                break
            h.update(block)
    return h.hexdigest()
