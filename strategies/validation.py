"""Every training reply is checked here before any strategy aggregates it.

A reply is rejected, with a reason that names the problem, when it carries no tensors or
no example count, when its tensor names, shapes or dtypes differ from what the client was
sent, or when any value is not finite. With ``update-norm-limit`` > 0 the update
||w_received - w_sent|| is bounded too: ``reject`` drops the reply, ``clip`` scales the
update down to the limit.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
from flwr.app import Message

from pollen.adapters import LayoutError, check_layout, layout
from pollen.records import ARRAYS_KEY, from_array_record

Tensors = dict[str, np.ndarray]


class RejectedReply(ValueError):
    """A reply that must not reach aggregation; the message says why."""


def validated_tensors(reply: Message, sent: Mapping[str, np.ndarray], weight_key: str,
                      norm_limit: float = 0.0, norm_action: str = "reject",
                      who: str = "client") -> Tensors:
    """The reply's tensors if acceptable (clipped when asked); RejectedReply otherwise."""
    content = reply.content
    if ARRAYS_KEY not in content.array_records:
        raise RejectedReply(f"reply of {who} carries no '{ARRAYS_KEY}' tensors")
    metrics = list(content.metric_records.values())
    count = metrics[0].get(weight_key) if len(metrics) == 1 else None
    if (isinstance(count, bool) or not isinstance(count, (int, float))
            or not math.isfinite(count) or count <= 0):
        raise RejectedReply(f"reply of {who} has no positive '{weight_key}' "
                            f"in a single metric record (got {count!r})")
    try:
        received = from_array_record(content[ARRAYS_KEY])
    except Exception as error:  # undecodable bytes: whatever numpy raises, reject
        raise RejectedReply(f"reply of {who} has tensors that cannot be read: {error}") from error
    try:
        check_layout(layout(sent), received, what=f"reply of {who}")
    except LayoutError as error:
        raise RejectedReply(str(error)) from error
    for name, value in received.items():
        if value.dtype != sent[name].dtype:
            raise RejectedReply(f"reply of {who}: '{name}' is {value.dtype}, "
                                f"sent {sent[name].dtype}")
        if not np.all(np.isfinite(value)):
            raise RejectedReply(f"reply of {who}: '{name}' holds non-finite values")
    if norm_limit > 0:
        norm = math.sqrt(sum(float(np.sum((received[k].astype(np.float64) - sent[k]) ** 2))
                             for k in received))
        if norm > norm_limit:
            if norm_action == "reject":
                raise RejectedReply(f"reply of {who}: update norm {norm:.4g} exceeds "
                                    f"update-norm-limit {norm_limit:g}")
            scale = norm_limit / norm
            received = {k: (sent[k] + (v - sent[k]) * scale).astype(v.dtype)
                        for k, v in received.items()}
    return received
