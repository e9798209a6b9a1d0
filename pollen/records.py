"""Named numpy arrays <-> Flower records, and the bytes they occupy on the wire.

float32 tensors travel in Flower's own numpy format. With another ``wire-dtype`` each
tensor is an Array of stype ``pollen.wire``, dtype = the encoding, data = the encoded
bytes (``pollen.wire``), preceded for int8 by its float32 scale; ``from_array_record``
decodes either form to float32.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping

import numpy as np
from flwr.app import Array, ArrayRecord, RecordDict

from pollen import wire

# ArrayRecord key of train and evaluate messages, and of train replies: the model.
ARRAYS_KEY = "arrays"
# Config key of every message: the run's class names, so that a client reading its own
# file (deployment) maps labels exactly as the server does.
LABEL_NAMES_KEY = "label-names"


WIRE_STYPE = "pollen.wire"
_SCALE = struct.Struct("<f")


def to_array_record(state: Mapping[str, np.ndarray], encoding: str = "float32") -> ArrayRecord:
    if encoding == "float32":
        return ArrayRecord(array_dict={name: Array(np.ascontiguousarray(value))
                                       for name, value in state.items()})
    return ArrayRecord(array_dict={name: _encoded(name, value, encoding)
                                   for name, value in state.items()})


def _encoded(name: str, value: np.ndarray, encoding: str) -> Array:
    data, scale = wire.encode(value, encoding, name)
    if encoding == "int8":
        data = _SCALE.pack(scale) + data
    return Array(dtype=encoding, shape=tuple(int(d) for d in np.shape(value)),
                 stype=WIRE_STYPE, data=data)


def from_array_record(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {name: _decoded(name, array) for name, array in record.items()}


def _decoded(name: str, array: Array) -> np.ndarray:
    if array.stype != WIRE_STYPE:
        return array.numpy()
    data, scale = array.data, 0.0
    if array.dtype == "int8":
        if len(data) < _SCALE.size:
            raise wire.WireError(f"'{name}' is too short to hold its int8 scale")
        (scale,), data = _SCALE.unpack(data[:_SCALE.size]), data[_SCALE.size:]
    return wire.decode(data, array.dtype, tuple(array.shape), scale, name)


def encode_records(content: RecordDict, encoding: str) -> None:
    """Re-encode every ArrayRecord of a message in ``encoding`` (in place; the records
    themselves are replaced, never mutated, so a strategy's own state is untouched)."""
    if encoding == "float32":
        return
    for key, record in list(content.array_records.items()):
        content[key] = to_array_record(from_array_record(record), encoding)


def array_bytes(content: RecordDict) -> int:
    """Serialized size of every tensor in a message (what Flower puts on the wire)."""
    return sum(len(array.data) for record in content.array_records.values()
               for array in record.values())
