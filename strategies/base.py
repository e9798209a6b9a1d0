"""What every Pollen strategy adds to Flower's FedAvg hooks.

- Sampling by stable client id with a seeded RNG (Flower samples transport node ids
  with the global ``random``, which is neither stable across restarts nor seeded).
- Replies aggregated in client-id order, so float sums do not depend on which reply
  arrived first: the same seed gives the same tensors.
- Replies reach it validated against what each client was sent (``validation.py`` wraps
  every strategy; ``rejected`` maps a rejected reply's node id to the reason, and the
  round counts it as a failure); with fewer than ``min_replies`` valid replies the round
  keeps the previous global model.
- FedAvg's mean at memory speed (``aggregate.py``), with Flower's arithmetic.
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
from collections.abc import Callable, Iterable, Mapping
from logging import INFO, WARNING

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, Result, Strategy

from pollen.records import ARRAYS_KEY, array_views, from_array_record, to_array_record
from pollen.seeding import derive_seed
from strategies.aggregate import weighted_mean
from strategies.directory import ClientDirectory, NodeDirectory, client_sort_key
from strategies.validation import (RejectedReply, ValidatedUpdates, check_values,
                                   metric_problem)

StrategyState = dict  # {"tensors": dict[str, np.ndarray], "meta": JSON-able dict}
# Where a reply's accuracy may stand: Pollen's name, then Flower's examples' names.
ACCURACY_KEYS = ("eval_accuracy", "eval_acc", "accuracy")


def accuracy_of(metrics: Mapping) -> float | None:
    """The accuracy a metric record reports under any of ``ACCURACY_KEYS``, else None."""
    return next((float(metrics[k]) for k in ACCURACY_KEYS if k in metrics), None)


def metrics_of(reply: Message) -> MetricRecord:
    """A reply's one MetricRecord, whatever its key (Flower's examples and Pollen's
    clients call it ``metrics``)."""
    return next(iter(reply.content.metric_records.values()))


def mean_of_reported(contents: list[RecordDict], weight_key: str) -> MetricRecord:
    """Each metric's ``weight_key``-weighted mean over the replies that report it.

    Flower's ``aggregate_metricrecords`` normalises every key by the weight of all
    replies, so a key some clients omit comes out too small, and ``FedAvg``'s reply check
    stops the round when the replies' keys differ. Where every reply reports every key
    this is Flower's arithmetic, term for term."""
    records = [next(iter(c.metric_records.values())) for c in contents]
    keys = list(dict.fromkeys(k for r in records for k in r if k != weight_key))
    mean = MetricRecord()
    for key in keys:
        reporting = [r for r in records if key in r]
        total = sum(float(r[weight_key]) for r in reporting)
        for record in reporting:
            factor = float(record[weight_key]) / total
            value = record[key]
            term = [v * factor for v in value] if isinstance(value, list) else value * factor
            mean[key] = term if key not in mean else (
                [a + b for a, b in zip(mean[key], term, strict=True)]
                if isinstance(term, list) else mean[key] + term)
    return mean


def prefixed(tensors: Mapping[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    """Tensors under ``prefix`` in a strategy's flat state (``theta/0/`` + name)."""
    return {prefix + name: value for name, value in tensors.items()}


def unprefixed(tensors: Mapping[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    """The tensors of a flat state that sit under ``prefix``, with the prefix taken off."""
    return {name[len(prefix):]: np.asarray(value) for name, value in tensors.items()
            if name.startswith(prefix)}


class PollenStrategy(FedAvg):
    """Flower's FedAvg, sampled by client id, with its state in ``state_dict()``."""

    checks_values = True  # its mean finds non-finite replies (validation.ValidatedUpdates)

    def __init__(self, *, seed: int = 42, client_rotation: bool = False,
                 min_replies: int = 1, update_norm_limit: float = 0.0,
                 update_norm_action: str = "reject",
                 directory: ClientDirectory | None = None,
                 initial_arrays: ArrayRecord | None = None, **fedavg_kwargs) -> None:
        """Flower's FedAvg keywords (``fraction_train``, ``min_available_nodes``,
        ``weighted_by_key``, the metric aggregation functions, ...) and Pollen's: the
        sampling ``seed``, ``client_rotation``, ``min_replies`` (fewer valid replies keep
        the previous model) and the update norm bound (``validation.py``). Without a
        ``directory`` the clients are known by node id and need not answer a ``query``
        (``NodeDirectory``: any Flower ClientApp). ``initial_arrays`` may wait for
        ``start()``, as in Flower."""
        fedavg_kwargs.setdefault("train_metrics_aggr_fn", mean_of_reported)
        fedavg_kwargs.setdefault("evaluate_metrics_aggr_fn", mean_of_reported)
        super().__init__(**fedavg_kwargs)
        if update_norm_action not in ("reject", "clip"):
            raise ValueError(f"update_norm_action must be 'reject' or 'clip', got "
                             f"{update_norm_action!r}")
        self.directory = directory if directory is not None else NodeDirectory()
        self.seed = seed
        self.client_rotation = client_rotation
        self.min_replies = min_replies
        self.update_norm_limit, self.update_norm_action = update_norm_limit, update_norm_action
        # Per round: what each node was sent to train from, and how aggregation went.
        self.sent: dict[int, dict[str, np.ndarray]] = {}
        self.rejected: dict[int, str] = {}  # node id -> reason
        self.kept_previous_global = False
        self.global_arrays: ArrayRecord | None = None
        if initial_arrays is not None:
            self.begin(initial_arrays)

    def begin(self, initial_arrays: ArrayRecord) -> None:
        """Start from ``initial_arrays``: the global model and whatever a method derives
        from it. ``start()`` calls it, and so does the constructor when given them."""
        self.global_arrays = initial_arrays

    def start(self, grid: Grid, initial_arrays: ArrayRecord, num_rounds: int = 3,
              timeout: float = 3600, train_config: ConfigRecord | None = None,
              evaluate_config: ConfigRecord | None = None,
              evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None = None
              ) -> Result:
        """Flower's ``Strategy.start()`` from ``initial_arrays``, with every training
        reply validated first (``validation.ValidatedUpdates``: dropped replies are
        logged with their node and reason and counted in the round's train metrics)."""
        self.begin(initial_arrays)
        return Strategy.start(ValidatedUpdates.around(self), grid, self.global_arrays,
                              num_rounds, timeout, train_config, evaluate_config, evaluate_fn)

    def summary(self) -> None:
        log(INFO, "\t├──> Pollen: seed %d, client rotation %s, min replies %d", self.seed,
            "on" if self.client_rotation else "off", self.min_replies)
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

    def model_for(self, node: int) -> dict[str, np.ndarray] | None:
        """The tensors a node gets, for strategies that keep per-client (or per-family)
        models; None: every node gets the global ``arrays`` (one shared record)."""
        return None

    def _messages(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                  node_ids: list[int], message_type: str) -> list[Message]:
        """One message per node; with per-node models (``model_for``) what each node was
        sent to train from is kept in ``sent``."""
        config = self.message_config(config, server_round)
        if message_type == MessageType.TRAIN:
            self.sent = {}
        messages = []
        for node in node_ids:
            own = self.model_for(node)
            if own is not None and message_type == MessageType.TRAIN:
                self.sent[node] = own
            record = arrays if own is None else to_array_record(own)
            messages.append(Message(content=RecordDict({self.arrayrecord_key: record,
                                                        self.configrecord_key: config}),
                                    message_type=message_type, dst_node_id=node))
        return messages

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        nodes = self.sample_nodes(grid, self.fraction_train, self.min_train_nodes,
                                  server_round, "train")
        return self._messages(server_round, arrays, config, nodes, MessageType.TRAIN)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord,
                           config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        if self.fraction_evaluate == 0.0:  # as Flower's FedAvg: no client evaluation
            return []
        nodes = self.sample_nodes(grid, self.fraction_evaluate, self.min_evaluate_nodes,
                                  server_round, "evaluate")
        return self._messages(server_round, arrays, config, nodes, MessageType.EVALUATE)

    def in_client_order(self, replies: Iterable[Message]) -> list[Message]:
        return sorted(replies, key=lambda m: client_sort_key(
            self.directory.client_of(m.metadata.src_node_id).client_id))

    def enough_replies(self, count: int) -> bool:
        """Whether ``count`` valid replies may change the global model (``min-replies``);
        if not, the round keeps the previous one and says so."""
        self.kept_previous_global = count < self.min_replies
        if self.kept_previous_global:
            log(WARNING, "only %d valid replies (min-replies %d): keeping the previous global "
                "model", count, self.min_replies)
        return not self.kept_previous_global

    def accepted(self, replies: Iterable[Message]) -> list[Message]:
        """Replies in client-id order (``ValidatedUpdates`` has checked them); error
        replies stay, for the caller to count. Fewer than ``min_replies`` valid replies:
        none, and the round keeps the previous global."""
        self.rejected = {}
        kept = self.in_client_order(replies)
        return kept if self.enough_replies(sum(not m.has_error() for m in kept)) else []

    def valid_replies(self, replies: Iterable[Message]) -> list[Message]:
        """The accepted replies that carry content (error replies are logged and left out)."""
        kept = self.accepted(replies)
        valid = [m for m in kept if not m.has_error()]
        log(INFO, "aggregate_train: %d valid replies, %d errors", len(valid),
            len(kept) - len(valid))
        return valid

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """FedAvg: the example-weighted mean of the replies (``aggregate.weighted_mean``,
        Flower's arithmetic), and Flower's weighted mean of their metrics.

        The values are checked here, not reply by reply (``checks_values``): a non-finite
        value in any reply makes the mean non-finite; then each reply is checked, the
        guilty ones are rejected, and the mean is taken again without them."""
        valid = self.valid_replies(replies)
        while valid:
            views = [array_views(m.content[ARRAYS_KEY]) for m in valid]
            mean = weighted_mean(views, [float(metrics_of(m)[self.weighted_by_key])
                                         for m in valid])
            if all(np.isfinite(value).all() for value in mean.values()):
                break
            checked = []
            for message, tensors in zip(valid, views):
                try:
                    check_values(tensors, self.directory.name_of(message.metadata.src_node_id))
                    checked.append(message)
                except RejectedReply as error:
                    log(WARNING, "rejected: %s", error)
                    self.rejected[message.metadata.src_node_id] = str(error)
            if len(checked) == len(valid):  # finite replies whose mean overflows float32
                log(WARNING, "the mean of %d finite replies is not finite", len(valid))
                self.kept_previous_global, checked = True, []
            valid = checked if self.enough_replies(len(checked)) else []
        if not valid:
            return None, None
        self.global_arrays = to_array_record(mean)
        return self.global_arrays, self.train_metrics_aggr_fn(
            [m.content for m in valid], self.weighted_by_key)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]
                           ) -> MetricRecord | None:
        """The metric aggregation function over the replies whose metrics can be weighted;
        each other reply is logged with its node and reason (an error reply too)."""
        usable = []
        for reply in self.in_client_order(replies):
            who = self.directory.name_of(reply.metadata.src_node_id)
            problem = (f"failed: {reply.error.reason}" if reply.has_error()
                       else metric_problem(reply.content, self.weighted_by_key))
            if problem:
                log(WARNING, "evaluate reply of %s left out: %s", who, problem)
            else:
                usable.append(reply)
        if not usable:
            return None
        return self.evaluate_metrics_aggr_fn([m.content for m in usable], self.weighted_by_key)

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
        """JSON-able fields this round adds to its metrics row (after ``aggregate_evaluate``)."""
        return {}

    def final_models(self) -> dict[str, dict[str, np.ndarray]]:
        """Models to save at the end of the run, by folder relative to the run folder."""
        return {"model": from_array_record(self.global_arrays)}

    def model_family(self, folder: str) -> str | None:
        """The family whose model a ``final_models`` folder is saved with (None: the run's
        model)."""
        return None

    def state_dict(self) -> StrategyState:
        tensors = prefixed(from_array_record(self.global_arrays), "global/")
        return {"tensors": tensors, "meta": {"strategy": type(self).__name__}}

    def load_state_dict(self, state: StrategyState) -> None:
        if state["meta"].get("strategy") != type(self).__name__:
            raise ValueError(f"state of {state['meta'].get('strategy')} cannot be loaded "
                             f"into {type(self).__name__}")
        self.global_arrays = to_array_record(unprefixed(state["tensors"], "global/"))
