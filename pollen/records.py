"""Named numpy arrays <-> Flower records, and the bytes they occupy on the wire.

float32 tensors travel in Flower's own numpy format. With another ``wire-dtype`` each
tensor is an Array of stype ``pollen.wire``, dtype = the encoding, data = the encoded
bytes (``pollen.wire``), preceded for int8 by its float32 scale; ``from_array_record``
decodes either form to float32.
"""

from __future__ import annotations

import functools
import io
import math
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
    record = ArrayRecord()  # filled item by item: array_dict= would copy every Array
    for name, value in state.items():
        record[name] = (_numpy_array(value) if encoding == "float32"
                        else _encoded(name, value, encoding))
    return record


def _numpy_array(value: np.ndarray) -> Array:
    """Flower's numpy-format Array: for float32 the bytes ``np.save`` writes (the cached
    header and the raw data, without np.save's per-call cost), else Flower's own."""
    value = np.ascontiguousarray(value)
    if value.dtype != _FLOAT32:
        return Array(value)
    shape = tuple(int(d) for d in value.shape)
    return Array(dtype="float32", shape=shape, stype="numpy.ndarray",
                 data=b"".join((_npy_header(shape), memoryview(value).cast("B"))))


def _encoded(name: str, value: np.ndarray, encoding: str) -> Array:
    data, scale = wire.encode(value, encoding, name)
    if encoding == "int8":
        data = _SCALE.pack(scale) + data
    return Array(dtype=encoding, shape=tuple(int(d) for d in np.shape(value)),
                 stype=WIRE_STYPE, data=data)


def from_array_record(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {name: _decoded(name, array) for name, array in record.items()}


def array_views(record: ArrayRecord) -> dict[str, np.ndarray]:
    """Like ``from_array_record``, but a float32 tensor in Flower's numpy format is a
    read-only view of the message's bytes, not a copy: the server's aggregation reads
    each reply byte once. numpy's ``np.load`` (what ``Array.numpy`` does) copies, so the
    .npy header is checked here against the one numpy writes for that shape, and
    anything else (another dtype, Fortran order, a wire encoding) is decoded as usual.

    The views are kept on the record (as Flower keeps an Array's chunks on the Array), so
    the validation of a reply and its aggregation read its header once; a record is
    replaced, never changed in place, once it is in a message."""
    views = record.__dict__.get(_VIEWS)
    if views is None or views.keys() != record.keys():
        views = {name: _view(name, array) for name, array in record.items()}
        record.__dict__[_VIEWS] = views
    return dict(views)


_FLOAT32 = np.dtype("<f4")
_VIEWS = "_pollen_views"


@functools.lru_cache(maxsize=4096)
def _npy_header(shape: tuple[int, ...]) -> bytes:
    """The header ``np.save`` writes before a C-ordered little-endian float32 array."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": "<f4", "fortran_order": False,
                                                  "shape": shape})
    return buffer.getvalue()


def _view(name: str, array: Array) -> np.ndarray:
    if array.stype != WIRE_STYPE and array.dtype == "float32":
        shape = tuple(array.shape)
        header, data = _npy_header(shape), array.data
        if len(data) == len(header) + 4 * math.prod(shape) and data.startswith(header):
            return np.ndarray(shape, _FLOAT32, data, len(header))
    return _decoded(name, array)


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
