"""pollen.exchange against a grid whose replies arrive on a clock, as a SuperLink's do."""

from __future__ import annotations

import time
from collections.abc import Iterable
from uuid import uuid4

from flwr.app import ConfigRecord, Error, Message, MessageType, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity

from pollen.exchange import exchange


class ClockGrid(Grid):
    """Node n's reply becomes pullable ``arrival[n]`` seconds after the push; node 13's
    message is answered by the SuperLink itself, as when a SuperNode went away."""

    def __init__(self, arrival: dict[int, float]) -> None:
        self.arrival, self.pulls, self._due = arrival, 0, {}
        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for message in messages:
            message.metadata.__dict__["_message_id"] = str(uuid4())
            node = message.metadata.dst_node_id
            if node == 13:
                reply = Message(Error(code=3, reason="node unavailable"), reply_to=message)
                reply.metadata.__dict__["_src_node_id"] = SUPERLINK_NODE_ID
            else:
                reply = Message(RecordDict({"c": ConfigRecord({"node": node})}),
                                reply_to=message)
            self._due[message.metadata.message_id] = (time.monotonic() + self.arrival[node], reply)
            ids.append(message.metadata.message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        self.pulls += 1
        now = time.monotonic()
        ready = [i for i in message_ids if i in self._due and self._due[i][0] <= now]
        return [self._due.pop(i)[1] for i in ready]

    # Unused by exchange.
    def create_message(self, *args, **kwargs): raise NotImplementedError
    def get_node_ids(self): return list(self.arrival)
    def send_and_receive(self, *args, **kwargs): raise NotImplementedError
    def set_run(self, run_id): pass
    @property
    def run(self): raise NotImplementedError


def queries(nodes):
    return [Message(RecordDict({"c": ConfigRecord({"x": 1})}), message_type=MessageType.QUERY,
                    dst_node_id=n) for n in nodes]


def test_replies_are_collected_soon_after_they_arrive():
    grid = ClockGrid({7: 0.3, 9: 0.6})
    started = time.monotonic()
    replies = exchange(grid, queries([7, 9]), timeout=10.0)
    waited = time.monotonic() - started
    assert [r.metadata.src_node_id for r in replies] == [7, 9]
    assert 0.6 <= waited < 1.0  # Flower 1.39's HTTP grid would have slept 3 s


def test_replies_come_in_the_order_sent_whatever_their_arrival():
    grid = ClockGrid({7: 0.5, 9: 0.0, 11: 0.3})
    replies = exchange(grid, queries([7, 9, 11]), timeout=10.0)
    assert [r.metadata.src_node_id for r in replies] == [7, 9, 11]


def test_the_timeout_leaves_late_replies_out():
    grid = ClockGrid({7: 0.1, 9: 5.0})
    started = time.monotonic()
    replies = exchange(grid, queries([7, 9]), timeout=0.8)
    assert [r.metadata.src_node_id for r in replies] == [7]
    assert 0.8 <= time.monotonic() - started < 1.2


def test_an_error_made_by_the_superlink_is_the_clients_failure():
    grid = ClockGrid({7: 0.0, 13: 0.0})
    replies = {r.metadata.src_node_id: r for r in exchange(grid, queries([7, 13]), timeout=5)}
    assert set(replies) == {7, 13}
    assert replies[13].has_error() and replies[13].error.reason == "node unavailable"
    assert not replies[7].has_error()
    assert exchange(grid, [], timeout=5) == [] and grid.pulls == 1
