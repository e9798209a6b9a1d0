"""Tensor encodings on the wire: float32, float16, bfloat16 and int8 with a per-tensor scale.

One codec serves both places tensors leave a process: Flower messages during training
(``wire-dtype``; ``pollen.records``) and adapter bundles in the registry
(``pollen.registry``). Encoded tensors always decode to float32; the server's own state
never leaves float32.

Error bounds (per element, x finite):
- float32: exact.
- float16: |x - x'| <= 2^-11 |x| for 2^-14 <= |x| <= 65504 (plus 2^-25 below that);
  |x| > 65504 cannot be represented and is refused when encoding.
- bfloat16: |x - x'| <= 2^-8 |x| (round to nearest even; float32's exponent range).
- int8: scale = max|x| / 127, x' = round(x / scale) * scale, so |x - x'| <= scale / 2.

bfloat16 goes through torch's own conversion (numpy has no bfloat16).
"""

from __future__ import annotations

import numpy as np
import torch

ENCODINGS = ("float32", "float16", "bfloat16", "int8")
FLOAT16_MAX = float(np.finfo(np.float16).max)
_ITEM_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "int8": 1}


class WireError(ValueError):
    """A tensor cannot be encoded, or encoded bytes do not decode to what they claim."""


def check_encoding(encoding: str) -> None:
    if encoding not in ENCODINGS:
        raise WireError(f"unknown encoding '{encoding}'; choose one of: {', '.join(ENCODINGS)}")


def encode(value: np.ndarray, encoding: str, name: str = "tensor") -> tuple[bytes, float]:
    """(little-endian bytes, int8 scale or 0.0) of a float array."""
    check_encoding(encoding)
    array = np.ascontiguousarray(value, dtype=np.float32)
    if not np.isfinite(array).all():
        raise WireError(f"'{name}' holds non-finite values; they cannot be encoded")
    if encoding == "float32":
        return array.astype("<f4").tobytes(), 0.0
    if encoding == "float16":
        peak = float(np.abs(array).max(initial=0.0))
        if peak > FLOAT16_MAX:
            raise WireError(f"'{name}' holds {peak:g}, beyond float16's range "
                            f"({FLOAT16_MAX:g}); use bfloat16 or float32")
        return array.astype("<f2").tobytes(), 0.0
    if encoding == "bfloat16":
        halves = torch.from_numpy(array.copy()).to(torch.bfloat16).view(torch.int16)
        return halves.numpy().astype("<i2").tobytes(), 0.0
    peak = float(np.abs(array).max(initial=0.0))
    scale = peak / 127.0 if peak > 0 else 0.0
    quantised = (np.zeros(array.shape, np.int8) if scale == 0.0 else
                 np.clip(np.rint(array / scale), -127, 127).astype(np.int8))
    return quantised.tobytes(), scale


def decode(data: bytes, encoding: str, shape: tuple[int, ...], scale: float = 0.0,
           name: str = "tensor") -> np.ndarray:
    """The float32 array that ``encode`` produced ``data`` from."""
    check_encoding(encoding)
    count = int(np.prod(shape, dtype=np.int64))
    expected = count * _ITEM_BYTES[encoding]
    if len(data) != expected:
        raise WireError(f"'{name}' carries {len(data)} bytes; shape {tuple(shape)} in "
                        f"{encoding} needs {expected} (truncated or corrupted)")
    if encoding == "float32":
        return np.frombuffer(data, dtype="<f4").astype(np.float32).reshape(shape)
    if encoding == "float16":
        return np.frombuffer(data, dtype="<f2").astype(np.float32).reshape(shape)
    if encoding == "bfloat16":
        halves = torch.from_numpy(np.frombuffer(data, dtype="<i2").astype(np.int16))
        return halves.view(torch.bfloat16).to(torch.float32).numpy().reshape(shape)
    if not (np.isfinite(scale) and scale >= 0):
        raise WireError(f"'{name}' has int8 scale {scale}; it must be finite and >= 0")
    return (np.frombuffer(data, dtype=np.int8).astype(np.float32) * np.float32(scale)
            ).reshape(shape)
