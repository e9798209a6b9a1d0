"""What the strategies for heterogeneous backbones share (heterotune, fedavg-per-family,
hetlora): clients of several families, each sent only its own family's model.

The server keeps each family's tensors; a client receives its family's model (its
family-specific tensors plus whatever the subclass shares across families), and replies
are grouped by family before ``combine`` turns them into the next models. Within a
family, tensors are averaged by sample count, as FedAvg does. The global ArrayRecord
(state, checkpoints) is the flat union ``<family>/<name>`` and ``shared/<name>``.

Message contract: the shared one (``strategies/base.py``); the query reply's ``family``
names the client's backbone (one of ``model-families``), and ``arrays`` in train and
evaluate messages are that family's tensors.
"""

from __future__ import annotations

from collections.abc import Iterable
from logging import INFO

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid

from pollen.records import ARRAYS_KEY, from_array_record, to_array_record
from strategies.base import PollenStrategy, StrategyState

Tensors = dict[str, np.ndarray]
SHARED = "shared"


class Reply:
    """One accepted training reply: its tensors, what was sent, its example count."""

    def __init__(self, tensors: Tensors, sent: Tensors, num_examples: int) -> None:
        self.tensors, self.sent, self.num_examples = tensors, sent, num_examples


def weighted_mean(arrays: list[np.ndarray], weights: list[float]) -> np.ndarray:
    total = float(sum(weights))
    return (sum(a.astype(np.float64) * (w / total) for a, w in zip(arrays, weights))
            ).astype(np.float32)


class FamilyFedAvg(PollenStrategy):
    """Per-family FedAvg with nothing shared: the ``fedavg-per-family`` baseline."""

    def __init__(self, *, initial_models: dict[str, Tensors], **kwargs) -> None:
        self.families = sorted(initial_models)
        self.family_tensors, self.shared = self.split_models(initial_models)
        super().__init__(initial_arrays=to_array_record(self.flat()), **kwargs)
        self.family_metrics: dict = {}

    def split_models(self, models: dict[str, Tensors]) -> tuple[dict[str, Tensors], Tensors]:
        """(family-specific tensors per family, tensors shared by every family)."""
        return {f: dict(t) for f, t in models.items()}, {}

    def family_model(self, family: str) -> Tensors:
        return {**self.family_tensors[family], **self.shared}

    def global_models(self) -> dict[str, Tensors]:
        return {f: self.family_model(f) for f in self.families}

    def flat(self) -> Tensors:
        tensors = {f"{SHARED}/{n}": v for n, v in self.shared.items()}
        for family, own in self.family_tensors.items():
            tensors.update({f"{family}/{n}": v for n, v in own.items()})
        return tensors

    def summary(self) -> None:
        log(INFO, "\t├──> %s: families %s", type(self).__name__, ", ".join(self.families))
        super().summary()

    def _family_of_node(self, node: int) -> str:
        return self.directory.client_of(node).family

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self.sent = {}
        nodes = self.sample_nodes(grid, self.fraction_train, self.min_train_nodes,
                                  server_round, "train")
        return self.personal_messages(server_round, config, nodes, MessageType.TRAIN,
                                      lambda node: self.family_model(self._family_of_node(node)))

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord,
                           config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        nodes = self.sample_nodes(grid, self.fraction_evaluate, self.min_evaluate_nodes,
                                  server_round, "evaluate")
        return self.personal_messages(server_round, config, nodes, MessageType.EVALUATE,
                                      lambda node: self.family_model(self._family_of_node(node)))

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        # Flower's reply check wants one tensor layout for all replies; families differ.
        valid = self.valid_replies(replies)
        self.family_metrics = {}
        if not valid:
            return None, None
        metrics = self.train_metrics_aggr_fn([m.content for m in valid], self.weighted_by_key)
        groups: dict[str, list[Reply]] = {}
        for message in valid:
            node = message.metadata.src_node_id
            groups.setdefault(self._family_of_node(node), []).append(Reply(
                from_array_record(message.content[ARRAYS_KEY]), self.sent[node],
                int(message.content["metrics"][self.weighted_by_key])))
        for family, family_replies in groups.items():
            own = self.family_tensors[family]
            self.family_tensors[family] = {
                name: weighted_mean([r.tensors[name] for r in family_replies],
                                    [r.num_examples for r in family_replies])
                for name in own}
        self.combine_shared(groups, server_round)
        self.global_arrays = to_array_record(self.flat())
        return self.global_arrays, metrics

    def combine_shared(self, groups: dict[str, list[Reply]], server_round: int) -> None:
        """Update ``self.shared`` from the replies grouped by family."""

    def round_metrics(self) -> dict:
        return self.family_metrics

    def final_models(self) -> dict[str, Tensors]:
        return {f"adapters/{family}": self.family_model(family) for family in self.families}

    def model_family(self, folder: str) -> str:
        return folder.split("/", 1)[1]

    def load_state_dict(self, state: StrategyState) -> None:
        super().load_state_dict(state)
        flat = from_array_record(self.global_arrays)
        self.shared = {k[len(SHARED) + 1:]: v for k, v in flat.items()
                       if k.startswith(SHARED + "/")}
        self.family_tensors = {f: {k[len(f) + 1:]: v for k, v in flat.items()
                                   if k.startswith(f + "/")} for f in self.families}
