"""A test-only client app: the real one, with a fault injected by node config ``fault``.

raise: the train handler raises; slow: it sleeps ``SLOW_SECONDS`` first (beyond a short
round-timeout); vanish: the client disconnects mid-round; nan: a reply tensor is NaN;
shape: a reply tensor has the wrong shape. Describe and evaluate are left alone, so the
client stays in the run and fails again every round.
"""

from __future__ import annotations

import time

import numpy as np
from flwr.app import Context, Message

from client_app.app import app as real_client_app
from pollen.records import from_array_record, to_array_record
from tests.localgrid import Disconnected

SLOW_SECONDS = 3.0  # the round timeout is 0.6 of it: 1.8 s, room for 4 describes under load
FAULTS = ("raise", "slow", "vanish", "nan", "shape")


def faulty_client_app(message: Message, context: Context) -> Message:
    fault = context.node_config.get("fault", "")
    if message.metadata.message_type != "train" or not fault:
        return real_client_app(message, context)
    if fault == "raise":
        raise RuntimeError("injected failure")
    if fault == "vanish":
        raise Disconnected()
    if fault == "slow":
        time.sleep(SLOW_SECONDS)
    reply = real_client_app(message, context)
    arrays = from_array_record(reply.content["arrays"])
    name = sorted(arrays)[0]
    if fault == "nan":
        arrays[name] = np.full_like(arrays[name], np.nan)
    if fault == "shape":
        arrays[name] = np.zeros(1, dtype=np.float32)
    reply.content["arrays"] = to_array_record(arrays)
    return reply


def grid_with_fault(num_clients: int, fault: str, faulty_clients=(0,),
                    reply_timeout: float | None = None):
    from tests.localgrid import LocalGrid

    grid = LocalGrid.simulation(faulty_client_app, num_clients)
    grid.reply_timeout = reply_timeout
    for node, node_config in grid.node_configs.items():
        if node_config["partition-id"] in faulty_clients:
            node_config["fault"] = fault
    return grid
