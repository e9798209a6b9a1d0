"""What every Pollen strategy adds to Flower's FedAvg hooks.

- Sampling by stable client id with a seeded RNG (Flower samples transport node ids
  with the global ``random``, which is neither stable across restarts nor seeded).
- Replies aggregated in client-id order, so float sums do not depend on which reply
  arrived first: the same seed gives the same tensors.
- Every reply is validated against what its client was sent (``validation.py``) before
  aggregation (``rejected`` maps a rejected reply's node id to the reason; the round
  counts it as a failure); with fewer than ``min_replies`` valid replies the round keeps
  the previous global model.
- The global tensors live in the strategy, behind ``state_dict``/``load_state_dict``.
- Hooks for what a strategy adds to a run's outputs: ``round_records`` (extra JSON lines
  each round) and ``final_models`` (models saved at the end).

Subclasses override Flower's hooks and call ``super()``; Flower's own strategies are
combined with this class through cooperative inheritance (see ``fedprox/strategy.py``).

The message contract every method shares (each method's ``strategy.py`` adds its own):

- query (``ClientDirectory``): content ``config`` = the run record (every run-config
  key, ``label-names``). Reply: ConfigRecord ``client`` with ``client-id`` (str, stable
  across restarts), ``num-train`` and ``num-test`` (int), and ``family`` (str, the
  backbone the client runs).
- train: content ``arrays`` (ArrayRecord of the travelling tensors, float32 or encoded in
  ``wire-dtype``, ``pollen.records``) and ``config`` (the run record and
  ``server-round``). Reply: ``arrays`` with the same names, shapes and dtype, and one
  MetricRecord ``metrics`` with ``num-examples`` > 0 (the weight); ``train_loss``,
  ``train_seconds`` and ``peak_memory_mb`` are reported when present.
- evaluate: content ``arrays`` and ``config`` as for train. Reply: MetricRecord
  ``metrics`` with ``num-examples``, ``eval_loss`` and ``eval_accuracy`` (the model on
  the client's local test split).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from logging import INFO, WARNING

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from pollen.records import ARRAYS_KEY, from_array_record, to_array_record
from pollen.seeding import derive_seed
from strategies.directory import ClientDirectory, client_sort_key
from strategies.validation import RejectedReply, validated_tensors

StrategyState = dict  # {"tensors": dict[str, np.ndarray], "meta": JSON-able dict}


class PollenStrategy(FedAvg):
    """Flower's FedAvg, sampled by client id, with its state in ``state_dict()``."""

    def __init__(self, *, directory: ClientDirectory, initial_arrays: ArrayRecord,
                 seed: int, client_rotation: bool = False, min_replies: int = 1,
                 norm_limit: float = 0.0, norm_action: str = "reject",
                 **fedavg_kwargs) -> None:
        super().__init__(**fedavg_kwargs)
        self.directory = directory
        self.global_arrays = initial_arrays
        self.seed = seed
        self.client_rotation = client_rotation
        self.min_replies, self.norm_limit, self.norm_action = min_replies, norm_limit, norm_action
        # Per round: what each node was sent to train from, and how aggregation went.
        self.sent: dict[int, dict[str, np.ndarray]] = {}
        self.rejected: dict[int, str] = {}  # node id -> reason
        self.kept_previous_global = False

    def summary(self) -> None:
        log(INFO, "\t├──> Pollen: seed %d, client rotation %s, min replies %d, "
            "update-norm-limit %s", self.seed, "on" if self.client_rotation else "off",
            self.min_replies,
            f"{self.norm_limit:g} ({self.norm_action})" if self.norm_limit > 0 else "off")
        super().summary()

    def sample_nodes(self, grid: Grid, fraction: float, min_nodes: int, server_round: int,
                     purpose: str) -> list[int]:
        """Node ids of a sample of client ids, in client-id order.

        Seeded random sampling; with client rotation, training instead walks through the
        clients in id order, ``size`` at a time (round r takes clients
        (r-1)*size ... r*size-1, wrapping around), so each round trains a different group.
        """
        self.directory.refresh(grid, min_nodes=self.min_available_nodes)
        clients = self.directory.clients()
        size = min(len(clients), max(int(len(clients) * fraction), min_nodes))
        if self.client_rotation and purpose == "train":
            start = (server_round - 1) * size
            chosen = [clients[(start + i) % len(clients)] for i in range(size)]
        else:
            chosen = random.Random(derive_seed(self.seed, purpose, server_round)).sample(
                clients, size)
        return [c.node_id for c in sorted(chosen, key=lambda c: client_sort_key(c.client_id))]

    def message_config(self, config: ConfigRecord, server_round: int) -> ConfigRecord:
        """The run record (so that any caller, Flower's ``start()`` included, sends the
        clients the run's config), then what the caller and the strategy put in
        ``config``, then the round."""
        return ConfigRecord({**self.directory.run_record, **config,
                             "server-round": server_round})

    def _messages(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                  node_ids: list[int], message_type: str) -> list[Message]:
        config = self.message_config(config, server_round)
        record = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: config})
        return [Message(content=record, message_type=message_type, dst_node_id=node)
                for node in node_ids]

    def personal_messages(self, server_round: int, config: ConfigRecord, nodes: list[int],
                          message_type: str, tensors_for: Callable[[int], dict[str, np.ndarray]]
                          ) -> list[Message]:
        """One message per node with that node's own tensors (``tensors_for(node)``);
        for training, what each node was sent is kept for validation."""
        config = self.message_config(config, server_round)
        messages = []
        for node in nodes:
            tensors = tensors_for(node)
            if message_type == MessageType.TRAIN:
                self.sent[node] = tensors
            content = RecordDict({self.arrayrecord_key: to_array_record(tensors),
                                  self.configrecord_key: config})
            messages.append(Message(content=content, message_type=message_type,
                                    dst_node_id=node))
        return messages

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        nodes = self.sample_nodes(grid, self.fraction_train, self.min_train_nodes,
                                  server_round, "train")
        sent = from_array_record(arrays)
        self.sent = {node: sent for node in nodes}
        return self._messages(server_round, arrays, config, nodes, MessageType.TRAIN)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord,
                           config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        nodes = self.sample_nodes(grid, self.fraction_evaluate, self.min_evaluate_nodes,
                                  server_round, "evaluate")
        return self._messages(server_round, arrays, config, nodes, MessageType.EVALUATE)

    def in_client_order(self, replies: Iterable[Message]) -> list[Message]:
        return sorted(replies, key=lambda m: client_sort_key(
            self.directory.client_of(m.metadata.src_node_id).client_id))

    def accepted(self, replies: Iterable[Message]) -> list[Message]:
        """Replies in client-id order that pass ``validation.validated_tensors`` against
        what their client was sent (clipped replies carry their clipped tensors);
        error replies stay, for Flower's FedAvg to log and drop. Fewer than
        ``min_replies`` valid replies: none, and the round keeps the previous global."""
        self.rejected = {}
        kept = []
        for reply in self.in_client_order(replies):
            if not reply.has_error():
                node = reply.metadata.src_node_id
                client = self.directory.client_of(node).client_id
                try:
                    if node not in self.sent:
                        raise RejectedReply(f"reply of client {client}, which was sent no work")
                    tensors = validated_tensors(
                        reply, self.sent[node], self.weighted_by_key, self.norm_limit,
                        self.norm_action, who=f"client {client}")
                except RejectedReply as error:
                    log(WARNING, "rejected: %s", error)
                    self.rejected[node] = str(error)
                    continue
                reply.content[ARRAYS_KEY] = to_array_record(tensors)
            kept.append(reply)
        valid = sum(not reply.has_error() for reply in kept)
        self.kept_previous_global = valid < self.min_replies
        if self.kept_previous_global:
            log(WARNING, "only %d valid replies (min-replies %d): keeping the previous global "
                "model", valid, self.min_replies)
            return []
        return kept

    def valid_replies(self, replies: Iterable[Message]) -> list[Message]:
        """The accepted replies that carry content (error replies are logged and left out),
        for strategies that aggregate on their own rather than through Flower's FedAvg."""
        kept = self.accepted(replies)
        valid = [m for m in kept if not m.has_error()]
        log(INFO, "aggregate_train: %d valid replies, %d errors, %d rejected", len(valid),
            len(kept) - len(valid), len(self.rejected))
        return valid

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        arrays, metrics = super().aggregate_train(server_round, self.accepted(replies))
        if arrays is not None:
            self.global_arrays = arrays
        return arrays, metrics

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]
                           ) -> MetricRecord | None:
        return super().aggregate_evaluate(server_round, self.in_client_order(replies))

    def round_records(self, server_round: int) -> dict[str, dict]:
        """Extra records for this round, by output file name (one JSON line each)."""
        return {}

    def round_files(self, server_round: int) -> dict[str, bytes]:
        """Files this round adds to the run folder, by name (e.g. Mosaic's sample grid)."""
        return {}

    def check_clients(self, clients: list) -> None:
        """Raise ConfigError, before round 1, if the clients (``directory.ClientInfo``)
        cannot run this strategy."""

    def round_metrics(self) -> dict:
        """JSON-able fields this round adds to its metrics row (after ``aggregate_train``)."""
        return {}

    def final_models(self) -> dict[str, dict[str, np.ndarray]]:
        """Models to save at the end of the run, by folder relative to the run folder."""
        return {"model": from_array_record(self.global_arrays)}

    def model_family(self, folder: str) -> str | None:
        """The family whose model a ``final_models`` folder is saved with (None: the run's
        model)."""
        return None

    def state_dict(self) -> StrategyState:
        tensors = {f"global/{k}": v for k, v in from_array_record(self.global_arrays).items()}
        return {"tensors": tensors, "meta": {"strategy": type(self).__name__}}

    def load_state_dict(self, state: StrategyState) -> None:
        if state["meta"].get("strategy") != type(self).__name__:
            raise ValueError(f"state of {state['meta'].get('strategy')} cannot be loaded "
                             f"into {type(self).__name__}")
        prefix = "global/"
        self.global_arrays = to_array_record(
            {k[len(prefix):]: np.asarray(v) for k, v in state["tensors"].items()
             if k.startswith(prefix)})
