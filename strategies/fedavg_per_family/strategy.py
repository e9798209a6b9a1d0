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
from flwr.app import ArrayRecord, Message, MetricRecord
from flwr.common.logger import log

from pollen.records import ARRAYS_KEY, array_views, from_array_record, to_array_record
from strategies.aggregate import weighted_mean
from strategies.base import PollenStrategy, StrategyState, prefixed, unprefixed

Tensors = dict[str, np.ndarray]
SHARED = "shared"
# Family means accumulate in float64 (FedAvg's own mean, Flower's, in float32), so
# fedavg-per-family with one family matches FedAvg to about 1e-7, not bit for bit.
ACCUMULATE = np.float64


class Reply:
    """One accepted training reply: its tensors, what was sent, its example count."""

    def __init__(self, tensors: Tensors, sent: Tensors, num_examples: int) -> None:
        self.tensors, self.sent, self.num_examples = tensors, sent, num_examples


class FamilyFedAvg(PollenStrategy):
    """Per-family FedAvg with nothing shared: the ``fedavg-per-family`` baseline."""

    checks_values = False  # replies are grouped by family before any mean

    def __new__(cls, *args, directory=None, **kwargs):
        """Refused without Pollen's client directory: each client must say its family
        (and, for HeteroTune and Mosaic, run their own layers), which only Pollen's
        client app does."""
        if directory is None:
            raise ValueError(
                f"{cls.__name__} federates clients of several backbones: each client says "
                "its family and runs the method's own layers in Pollen's client app "
                "(client_app.app), which a plain Flower ClientApp does not. Run it through "
                "Pollen's server app (run config strategy = 'fedavg-per-family', 'hetlora', "
                "'heterotune' or 'mosaic', with model-families)")
        return super().__new__(cls)

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
        tensors = prefixed(self.shared, f"{SHARED}/")
        for family, own in self.family_tensors.items():
            tensors.update(prefixed(own, f"{family}/"))
        return tensors

    def summary(self) -> None:
        log(INFO, "\t├──> %s: families %s", type(self).__name__, ", ".join(self.families))
        super().summary()

    def _family_of_node(self, node: int) -> str:
        return self.directory.client_of(node).family

    def model_for(self, node: int) -> Tensors:
        return self.family_model(self._family_of_node(node))

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
                array_views(message.content[ARRAYS_KEY]), self.sent[node],
                int(message.content["metrics"][self.weighted_by_key])))
        for family, family_replies in groups.items():
            own = self.family_tensors[family]
            self.family_tensors[family] = weighted_mean(
                [{name: r.tensors[name] for name in own} for r in family_replies],
                [r.num_examples for r in family_replies], ACCUMULATE)
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
        self.shared = unprefixed(flat, f"{SHARED}/")
        self.family_tensors = {f: unprefixed(flat, f"{f}/") for f in self.families}
