"""Who the clients are: stable client ids behind Flower's transport node ids.

Flower's node id changes when a SuperNode restarts; a client's own id (``client-id`` in
its node config, else its simulation ``partition-id``) does not. Sampling, reply order
and any per-client state are keyed by the client id. The directory learns it by sending
each new node one ``query`` message; the same reply tells the server how many examples
the client holds, and a client whose data or config is broken fails here, before any
training starts.

A plain Flower ClientApp (one that answers only train and evaluate messages, as Flower's
examples write them) has no query handler: a strategy built with Flower's keywords and no
directory uses ``NodeDirectory``, which sends nothing and knows each client by its node id.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from logging import INFO, WARNING

from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid

from pollen.exchange import exchange


class ClientSetupError(RuntimeError):
    """A client could not describe itself: its data or config is unusable."""


@dataclass(frozen=True)
class ClientInfo:
    node_id: int
    client_id: str
    num_train: int
    num_test: int
    family: str = ""  # the backbone the client runs


def client_sort_key(client_id: str) -> tuple[int, int, str]:
    """Numeric ids in numeric order, then the others alphabetically."""
    return (0, int(client_id), "") if client_id.isdigit() else (1, 0, client_id)


class ClientDirectory:
    def __init__(self, run_config: dict, timeout: float) -> None:
        self._run_config = run_config
        self._timeout = timeout
        self._by_node: dict[int, ClientInfo] = {}
        self._names: dict[int, str] = {}  # every node ever described, connected or not

    @property
    def run_record(self) -> dict:
        """What every message's config carries: the run config and the label names."""
        return dict(self._run_config)

    def refresh(self, grid: Grid, min_nodes: int = 1, strict: bool = False) -> None:
        """Describe every connected node not seen yet.

        With ``strict`` a failing node raises ClientSetupError (used before round 1);
        otherwise it is left out and asked again at the next refresh.
        """
        connected = set(self.wait_for(grid, min_nodes))
        self._by_node = {n: info for n, info in self._by_node.items() if n in connected}
        new_nodes = sorted(connected - set(self._by_node))
        if not new_nodes:
            return
        messages = [Message(content=RecordDict({"config": ConfigRecord(self._run_config)}),
                            message_type=MessageType.QUERY, dst_node_id=node)
                    for node in new_nodes]
        replies = exchange(grid, messages, self._timeout)
        answered = set()
        for reply in replies:
            node = reply.metadata.src_node_id
            answered.add(node)
            if reply.has_error():
                self._failed(strict, f"client on node {node} failed to start: "
                             f"{reply.error.reason}")
                continue
            about = reply.content["client"]
            self._by_node[node] = ClientInfo(
                node, str(about["client-id"]), int(about["num-train"]),
                int(about["num-test"]), str(about.get("family", "")))
            self._names[node] = f"client {about['client-id']}"
        for node in sorted(set(new_nodes) - answered):
            self._failed(strict, f"client on node {node} did not answer within "
                         f"{self._timeout:.0f}s")
        ids = [info.client_id for info in self._by_node.values()]
        if len(ids) != len(set(ids)):
            raise ClientSetupError(f"two connected nodes claim the same client id: {ids}")

    @staticmethod
    def wait_for(grid: Grid, min_nodes: int) -> list[int]:
        """Connected node ids, once there are at least ``min_nodes``."""
        while len(node_ids := list(grid.get_node_ids())) < min_nodes:
            log(INFO, "waiting for clients: %d of %d connected", len(node_ids), min_nodes)
            time.sleep(1.0)
        return node_ids

    @staticmethod
    def _failed(strict: bool, reason: str) -> None:
        if strict:
            raise ClientSetupError(reason)
        log(WARNING, reason)

    def clients(self) -> list[ClientInfo]:
        return sorted(self._by_node.values(), key=lambda c: client_sort_key(c.client_id))

    def client_of(self, node_id: int) -> ClientInfo:
        return self._by_node[node_id]

    def name_of(self, node_id: int) -> str:
        """'client <id>' for any node ever described (also after it left), else 'node <n>'."""
        return self._names.get(node_id, f"node {node_id}")


class NodeDirectory(ClientDirectory):
    """Clients known by Flower's node id, for ClientApps that answer no ``query``.

    No message is sent: every connected node is a client whose id is its node id, with
    unknown data sizes and family. Sampling stays seeded and replies stay in id order,
    but an id lasts only as long as the node's connection (a restarted SuperNode is a new
    client), and the run config travels only as the caller's ``train_config``."""

    def __init__(self) -> None:
        super().__init__({}, timeout=0.0)

    def refresh(self, grid: Grid, min_nodes: int = 1, strict: bool = False) -> None:
        connected = self.wait_for(grid, min_nodes)
        self._by_node = {node: ClientInfo(node, str(node), 0, 0) for node in connected}

    def client_of(self, node_id: int) -> ClientInfo:
        return self._by_node.get(node_id) or ClientInfo(node_id, str(node_id), 0, 0)
