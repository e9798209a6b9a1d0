"""An in-process Grid for tests: delivers each message straight to a ClientApp.

Flower's simulation runs the same ClientApp through Ray; this stands in for the
transport only, so that strategy and server tests run in milliseconds. Node ids are
arbitrary numbers, renameable, to test that Pollen keys clients by their own id.
Like the real transport, a reply that takes longer than ``reply_timeout`` seconds never
arrives (clients run one after the other inside ``push_messages``, so the grid, not the
caller's clock, applies the round timeout), and a client that raises ``Disconnected``
leaves the grid without replying.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from uuid import uuid4

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity


class Disconnected(Exception):
    """Raised by a test client to leave the grid mid-round."""


class LocalGrid(Grid):
    def __init__(self, client_app: ClientApp | Callable[[Message, Context], Message],
                 node_configs: dict[int, dict], reply_timeout: float | None = None) -> None:
        self.client_app = client_app
        self.reply_timeout = reply_timeout
        self.node_configs = dict(node_configs)
        self._replies: dict[str, Message] = {}
        self.sent: list[Message] = []
        # Messages stamp themselves with the identity of the process's task.
        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1

    @classmethod
    def simulation(cls, client_app, num_nodes: int, first_node_id: int = 1000) -> LocalGrid:
        return cls(client_app, {first_node_id + 7 * p: {"partition-id": p,
                                                         "num-partitions": num_nodes}
                                for p in range(num_nodes)})

    def set_run(self, run) -> None:  # noqa: D102 - nothing to set for an in-process run
        pass

    @property
    def run(self):
        raise NotImplementedError("LocalGrid has no run object")

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int,
                       group_id: str, ttl: float | None = None) -> Message:
        return Message(content=content, message_type=message_type, dst_node_id=dst_node_id,
                       group_id=group_id, ttl=ttl)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.node_configs)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for message in messages:
            message.metadata.__dict__["_message_id"] = str(uuid4())
            self.sent.append(message)
            ids.append(message.metadata.message_id)
            node = message.metadata.dst_node_id
            if node not in self.node_configs:
                continue
            context = Context(run_id=1, node_id=node, node_config=self.node_configs[node],
                              state=RecordDict(), run_config={})
            started = time.perf_counter()
            try:
                reply = self.client_app(message, context)
            except Disconnected:
                del self.node_configs[node]
                continue
            except Exception as error:  # the real runtime turns this into an error reply
                reply = Message(Error(code=0, reason=f"{type(error).__name__}: {error}"),
                                reply_to=message)
            if self.reply_timeout is None or time.perf_counter() - started <= self.reply_timeout:
                self._replies[message.metadata.message_id] = reply
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._replies.pop(i) for i in list(message_ids) if i in self._replies]

    def send_and_receive(self, messages: Iterable[Message], *,
                         timeout: float | None = None) -> Iterable[Message]:
        return self.pull_messages(self.push_messages(messages))
