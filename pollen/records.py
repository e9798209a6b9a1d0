"""Named numpy arrays <-> Flower records, and the bytes they occupy on the wire."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from flwr.app import Array, ArrayRecord, RecordDict

# ArrayRecord keys of train messages: the model to train, and (FedRef) the proximal anchor.
ARRAYS_KEY = "arrays"
REFERENCE_KEY = "reference"
# Train config key -> reply metric (guided merging): the index of the global model the
# client started from (0 = the initial model; round r sends global r-1).
GLOBAL_ROUND_KEY = "global-round"
# Config key of every message: the run's class names, so that a client reading its own
# file (deployment) maps labels exactly as the server does.
LABEL_NAMES_KEY = "label-names"


def to_array_record(state: Mapping[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord(array_dict={name: Array(np.ascontiguousarray(value))
                                   for name, value in state.items()})


def from_array_record(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {name: array.numpy() for name, array in record.items()}


def array_bytes(content: RecordDict) -> int:
    """Serialized size of every tensor in a message (what Flower puts on the wire)."""
    return sum(len(array.data) for record in content.array_records.values()
               for array in record.values())
