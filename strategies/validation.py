"""Every training reply is checked before any strategy aggregates it, by a wrapper around
the strategy, as Flower's differential-privacy wrappers clip around any strategy.

A reply is rejected, with a reason that names the problem, when it carries no tensors or
no example count, when its tensor names, shapes or dtypes differ from what the client was
sent, or when any value is not finite. With ``update-norm-limit`` > 0 the update
||w_received - w_sent|| is bounded too: ``reject`` drops the reply, ``clip`` scales the
update down to the limit.

Finiteness is one pass over the reply; a strategy whose aggregation is a weighted mean
that it checks itself (``checks_values`` = True: FedAvg and the methods built on its
mean) is spared it, since a non-finite value in any reply makes the mean non-finite and
that strategy then finds the reply and rejects it (``PollenStrategy.aggregate_train``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from logging import INFO, WARNING

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from pollen.adapters import LayoutError, check_layout, layout
from pollen.records import ARRAYS_KEY, WIRE_STYPE, array_views, to_array_record

Tensors = dict[str, np.ndarray]
REJECTED_KEY = "num-rejected"  # train metrics: replies dropped this round


class RejectedReply(ValueError):
    """A reply that must not reach aggregation; the message says why."""


def metric_problem(content: RecordDict, weight_key: str) -> str | None:
    """Why a reply's metrics cannot weight it (None: they can): Flower's contract is one
    MetricRecord holding a positive, finite ``weight_key``."""
    # Records by type, without RecordDict's per-call filtered copies (a hot path).
    metrics = [record for record in content.values() if isinstance(record, MetricRecord)]
    count = metrics[0].get(weight_key) if len(metrics) == 1 else None
    if (isinstance(count, bool) or not isinstance(count, (int, float))
            or not math.isfinite(count) or count <= 0):
        return (f"no positive '{weight_key}' in a single metric record "
                f"({len(metrics)} record(s), got {count!r})")
    return None


def checked_structure(reply: Message, sent: Mapping[str, np.ndarray], weight_key: str,
                      who: str = "client") -> Tensors:
    """The reply's tensors (views where possible) if their names, shapes and dtypes are
    what was sent and its example count is positive; RejectedReply otherwise."""
    content = reply.content
    if not isinstance(content.get(ARRAYS_KEY), ArrayRecord):
        raise RejectedReply(f"reply of {who} carries no '{ARRAYS_KEY}' tensors")
    problem = metric_problem(content, weight_key)
    if problem:
        raise RejectedReply(f"reply of {who} has {problem}")
    try:
        received = array_views(content[ARRAYS_KEY])
    except Exception as error:  # undecodable bytes: whatever numpy raises, reject
        raise RejectedReply(f"reply of {who} has tensors that cannot be read: {error}") from error
    if received.keys() == sent.keys() and all(
            value.shape == sent[name].shape and value.dtype == sent[name].dtype
            for name, value in received.items()):
        return received  # the common case, checked without building any message
    try:
        check_layout(layout(sent), received, what=f"reply of {who}")
    except LayoutError as error:
        raise RejectedReply(str(error)) from error
    for name, value in received.items():
        if value.dtype != sent[name].dtype:
            raise RejectedReply(f"reply of {who}: '{name}' is {value.dtype}, "
                                f"sent {sent[name].dtype}")
    return received


def check_values(received: Mapping[str, np.ndarray], who: str = "client") -> None:
    for name, value in received.items():
        if not np.isfinite(value).all():
            raise RejectedReply(f"reply of {who}: '{name}' holds non-finite values")


def bounded(received: Tensors, sent: Mapping[str, np.ndarray], norm_limit: float,
            norm_action: str, who: str = "client") -> Tensors:
    """The reply with its update bounded by ``norm_limit`` (rejected or clipped)."""
    norm = math.sqrt(sum(float(np.sum((received[k].astype(np.float64) - sent[k]) ** 2))
                         for k in received))
    if not math.isfinite(norm):
        check_values(received, who)  # names the tensor
    if norm <= norm_limit:
        return received
    if norm_action == "reject":
        raise RejectedReply(f"reply of {who}: update norm {norm:.4g} exceeds "
                            f"update-norm-limit {norm_limit:g}")
    scale = norm_limit / norm
    return {k: (sent[k] + (v - sent[k]) * scale).astype(v.dtype) for k, v in received.items()}


def validated_tensors(reply: Message, sent: Mapping[str, np.ndarray], weight_key: str,
                      norm_limit: float = 0.0, norm_action: str = "reject",
                      who: str = "client") -> Tensors:
    """The reply's tensors if acceptable (clipped when asked); RejectedReply otherwise."""
    received = checked_structure(reply, sent, weight_key, who)
    check_values(received, who)
    return bounded(received, sent, norm_limit, norm_action, who) if norm_limit > 0 else received


class ValidatedUpdates(Strategy):
    """Any Flower strategy, with every training reply checked (and, with a norm limit,
    clipped or rejected) before the strategy sees it.

    ``configure_train`` notes what each node was sent; ``aggregate_train`` drops the
    replies that fail (``rejected``: node id -> reason, merged with the inner strategy's
    own rejections) and hands the others on, in the order received. Everything else is
    the inner strategy's (attributes too, so the server app reads its state through it).
    """

    def __init__(self, strategy: Strategy, weight_key: str = "num-examples",
                 norm_limit: float = 0.0, norm_action: str = "reject",
                 name_of=lambda node: f"node {node}") -> None:
        self.strategy, self.weight_key = strategy, weight_key
        self.norm_limit, self.norm_action, self.name_of = norm_limit, norm_action, name_of
        self.sent: dict[int, Tensors] = {}
        self.own_rejected: dict[int, str] = {}

    @classmethod
    def around(cls, strategy) -> ValidatedUpdates:
        """A Pollen strategy wrapped with its own weight key, norm bound and client names."""
        return cls(strategy, weight_key=strategy.weighted_by_key,
                   norm_limit=strategy.update_norm_limit,
                   norm_action=strategy.update_norm_action,
                   name_of=strategy.directory.name_of)

    _OWN = frozenset({"strategy", "weight_key", "norm_limit", "norm_action", "name_of", "sent",
                      "own_rejected"})

    def __getattr__(self, name: str):
        return getattr(self.strategy, name)

    def __setattr__(self, name: str, value) -> None:
        if name in self._OWN:
            object.__setattr__(self, name, value)
        else:
            setattr(self.strategy, name, value)

    @property
    def rejected(self) -> dict[int, str]:
        return {**self.own_rejected, **getattr(self.strategy, "rejected", {})}

    def summary(self) -> None:
        log(INFO, "\t├──> Validated replies: names, shapes, dtypes, example counts, finite "
            "values; update-norm-limit %s", f"{self.norm_limit:g} ({self.norm_action})"
            if self.norm_limit > 0 else "off")
        self.strategy.summary()

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        messages = list(self.strategy.configure_train(server_round, arrays, config, grid))
        decoded: dict[int, Tensors] = {}  # a record broadcast to many nodes is read once
        self.sent = {}
        for message in messages:
            record = message.content[ARRAYS_KEY]
            if id(record) not in decoded:
                decoded[id(record)] = array_views(record)
            self.sent[message.metadata.dst_node_id] = decoded[id(record)]
        return messages

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        self.own_rejected, kept = {}, []
        check_all_values = not getattr(self.strategy, "checks_values", False)
        for reply in replies:
            if not reply.has_error():
                node = reply.metadata.src_node_id
                who = self.name_of(node)
                try:
                    if node not in self.sent:
                        raise RejectedReply(f"reply of {who}, which was sent no work")
                    received = checked_structure(reply, self.sent[node], self.weight_key, who)
                    if check_all_values:
                        check_values(received, who)
                    checked = received
                    if self.norm_limit > 0:
                        checked = bounded(received, self.sent[node], self.norm_limit,
                                          self.norm_action, who)
                    if checked is not received or any(
                            a.stype == WIRE_STYPE for a in reply.content[ARRAYS_KEY].values()):
                        # clipped, or decoded from a wire encoding: the strategy (any Flower
                        # strategy) gets float32 in Flower's own format
                        reply.content[ARRAYS_KEY] = to_array_record(checked)
                except RejectedReply as error:
                    log(WARNING, "rejected: %s", error)
                    self.own_rejected[node] = str(error)
                    continue
            kept.append(reply)
        arrays, metrics = self.strategy.aggregate_train(server_round, kept)
        if self.rejected:  # counted where Flower's start() keeps each round's metrics
            metrics = MetricRecord() if metrics is None else metrics
            metrics[REJECTED_KEY] = len(self.rejected)
        return arrays, metrics

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord,
                           config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        return self.strategy.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]
                           ) -> MetricRecord | None:
        return self.strategy.aggregate_evaluate(server_round, replies)
