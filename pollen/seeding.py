"""Seeds derived from the run seed, so every client and round has its own stream."""

from __future__ import annotations

import hashlib
import random

import numpy as np
import torch


def derive_seed(base: int, *parts: object) -> int:
    """A 31-bit seed from the run seed and any labels (round, client id, purpose).

    Hashing the labels (rather than adding them) keeps streams of different clients and
    rounds apart, and it is the same in every process, unlike Python's ``hash``.
    """
    text = "/".join([str(base), *map(str, parts)])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big") & 0x7FFFFFFF


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
