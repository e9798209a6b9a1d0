"""FedMerge (arXiv 2504.06768), as ../shared/docs/methods.md §2 gives it.

The server keeps d global models Theta_1..Theta_d, initialised independently (seeded
re-initialisation of the travelling tensors; the frozen backbone is shared), and a matrix
W with one row per client id, zero at first (a uniform merge). Each sampled client i gets
only its own merge

    theta_i0 = sum_j s_ij Theta_j,   s_i = softmax(W_i),

trains CE + mu ||theta - theta_i0||^2 from it (sent as ``proximal-mu`` = 2 mu, since
Pollen's training loop adds (mu/2)||.||^2) and returns theta_iE; delta_i = theta_i0 - theta_iE.

W step (softmax chain rule), on the ``fedmerge.w-tensors`` subset (the classifier head,
as the official code's 'linear' keys, when the model has one; else, and with ``all``,
every travelling tensor):

    G_ij = s_ij <Theta_j - theta_i0, delta_i>,   G <- G / sum |G|,   W <- W - m eta p G

with p_i = n_i / sum n over the round's clients. By default (``fedmerge.w-step =
official``) this is the official code's rule (shutong043/FedMerge, server_merging.py
``update_W``): it repeats W <- W - 0.01 p G until some entry of W has moved by more than
lr_W (at most 10,000 times), i.e. eta = 0.01 and m = the smallest count whose step moves
an entry by more than lr_W, taken here in closed form. The largest entry of W thus
moves by about lr_W each round, whatever the number of clients. Theta step:

    Theta_j <- Theta_j - lr_Theta sum_i w_ij delta_i,   w_ij = p_i s_ij / sum_i' p_i' s_i'j,

with s taken from the updated W, as the official code updates W first and then Theta.
Its p_i are over all clients, which equals ours when every client trains each round.

``fedmerge.w-step = plain`` is methods.md's formula read literally, one step
W_i <- W_i - lr_W p_i G_i. It is not the default because its size depends on the number
of clients: G sums to 1 in absolute value over clients x d entries and p_i ~ 1/clients,
so an entry moves by about lr_W / (clients^2 d). At lr_W = 100 (the value that moves W by
O(1) a round for 10 clients, d = 3) two clients move it by ~8: each row of W is one-hot
after a round, and later rounds flip a row between global models, dropping that client to
another client's model (#19: personalised accuracy 0.50 in such a round against FedAvg's
0.77, 2 clients, digits). The official rule bounds the move instead. lr_W = 1 (the
official code's default is 0.01 over its 500 rounds) lets W settle within Pollen's
10-20 round budgets; docs/benchmarks.md gives the 2- and 10-client comparison.

Message contract: the shared one (``strategies/base.py``), with each client's ``arrays``
its own merge theta_i0 (train and evaluate), and the train config's ``proximal-mu``
(= 2 mu, float): the client adds (mu/2)||theta - theta_i0||^2.

On LoRA (a causal LM's adapters, or an encoder's with its head) every merge above is
taken tensor by tensor, A and B separately: theta = (sum_j s_j B_j, sum_j s_j A_j), whose
product is not sum_j s_j B_j A_j (the cross terms s_j s_k B_j A_k stay). The official code
merges a ResNet's weights elementwise and has no LoRA; we keep its elementwise rule, which
is also how FlowerTune and OpenFedLLM average LoRA (FedAvg on A and B), so FedMerge and
FedAvg differ here only by FedMerge's weights. Merging the products BA exactly would
need a rank-d*r factor sent back (or an SVD truncation to rank r, which is not exact
either). Every Theta_j starts with B = 0, so all merges start as the frozen model.

The global model on the server's test split (eval_accuracy) is the uniform merge
mean_j Theta_j; each client evaluates its own merge on its local test split
(client_accuracy, also written as personalized_accuracy). No FedMerge code runs on the
client: the proximal term towards the received model is the client app's (``proximal-mu``).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from logging import INFO

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid
from torch import nn

from pollen.adapters import head_tensor_names, reinitialise_travelling
from pollen.errors import ConfigError
from pollen.records import ARRAYS_KEY, array_views, from_array_record, to_array_record
from pollen.seeding import derive_seed
from strategies.aggregate import CHUNK, weighted_sum
from strategies.base import PollenStrategy, StrategyState, accuracy_of, prefixed, unprefixed
from strategies.fedmerge.config import FedMergeConfig

Tensors = dict[str, np.ndarray]
OFFICIAL_W_STEP = 0.01
OFFICIAL_MAX_REPEATS = 10_000


def softmax(row: np.ndarray) -> np.ndarray:
    shifted = np.exp(row - row.max())
    return shifted / shifted.sum()


def merge(models: list[Tensors], weights: np.ndarray) -> Tensors:
    """sum_j w_j Theta_j, accumulated in float64."""
    return weighted_sum(models, list(weights), np.float64)


def initial_global_models(template: nn.Module, count: int, seed: int) -> list[Tensors]:
    """``count`` independently initialised sets of travelling tensors for one backbone."""
    model = copy.deepcopy(template)
    return [reinitialise_travelling(model, derive_seed(seed, "fedmerge-theta", j))
            for j in range(count)]


def theta_step(thetas: list[Tensors], anchors: list[Mapping[str, np.ndarray]],
               received: list[Mapping[str, np.ndarray]], mix: np.ndarray,
               lr: float) -> list[Tensors]:
    """Theta_j - lr sum_a mix_aj delta_a with delta_a = theta_a0 - theta_aE, in float64
    and rounded to float32 at the end.

    Written by hand, not with ``weighted_sum``, because the summands are differences
    that do not exist yet: each delta_a is formed one cache-sized chunk at a time and
    added to all d accumulators, so no client's float64 delta is ever held whole. Every
    element sees the same operations in the same order as the whole-tensor form
    (products rounded in float64, added in client order), so the result is bit for bit
    the same.
    """
    updated: list[Tensors] = [{} for _ in thetas]
    for name, first in thetas[0].items():
        size = first.size
        outs = [np.empty(size, np.float32) for _ in thetas]
        totals = np.empty((len(thetas), min(size, CHUNK)))
        delta, product = np.empty(min(size, CHUNK)), np.empty(min(size, CHUNK))
        for start in range(0, size, CHUNK):
            stop = min(start + CHUNK, size)
            width = stop - start
            for a, (anchor, reply) in enumerate(zip(anchors, received)):
                np.subtract(anchor[name].reshape(-1)[start:stop],
                            reply[name].reshape(-1)[start:stop], out=delta[:width],
                            dtype=np.float64)
                for j in range(len(thetas)):
                    if a == 0:
                        np.multiply(delta[:width], mix[a, j], out=totals[j, :width])
                    else:
                        np.multiply(delta[:width], mix[a, j], out=product[:width])
                        np.add(totals[j, :width], product[:width], out=totals[j, :width])
            for j, theta in enumerate(thetas):
                np.multiply(totals[j, :width], lr, out=totals[j, :width])
                np.subtract(theta[name].reshape(-1)[start:stop], totals[j, :width],
                            out=outs[j][start:stop], dtype=np.float64, casting="same_kind")
        for j, out in enumerate(outs):
            updated[j][name] = out.reshape(first.shape)
    return updated


def shuffled_copies(tensors: Tensors, count: int, seed: int) -> list[Tensors]:
    """``tensors`` and ``count - 1`` copies whose entries are permuted within each tensor
    (seeded): independent starting points of each tensor's own scale, for a caller
    that has only arrays. With the model at hand, ``initial_global_models`` re-runs its
    initialisers instead (what the official code does)."""
    rng = np.random.default_rng(seed)
    copies = [dict(tensors)]
    for _ in range(count - 1):
        copies.append({name: rng.permutation(value.reshape(-1)).reshape(value.shape)
                       for name, value in tensors.items()})
    return copies


DEFAULTS = FedMergeConfig()


class FedMerge(PollenStrategy):
    """Flower's FedAvg keywords, and FedMerge's with the defaults of
    ``[tool.flwr.app.config.fedmerge]``. ``global_models`` (d sets of tensors) may be
    given; else ``start()`` derives ``num_global_models`` of them from its initial arrays
    (``shuffled_copies``).

    A plain Flower ClientApp works with it: it trains from its own merge theta_i0; the
    mu ||theta - theta_i0||^2 term needs one line in its training loop
    (``strategies.ProximalTerm``), and without it is lost. W's rows are then keyed by
    node id (a restarted SuperNode starts a fresh row)."""

    checks_values = False  # its updates are deltas to each client's own merge

    def __init__(self, *, num_global_models: int = DEFAULTS.num_global_models,
                 mu: float = DEFAULTS.mu, lr_w: float = DEFAULTS.lr_w,
                 lr_theta: float = DEFAULTS.lr_theta, w_tensors: str = DEFAULTS.w_tensors,
                 w_step: str = DEFAULTS.w_step, global_models: list[Tensors] | None = None,
                 **kwargs) -> None:
        FedMergeConfig(num_global_models=num_global_models, mu=mu, lr_w=lr_w,
                       lr_theta=lr_theta, w_tensors=w_tensors, w_step=w_step)  # checks
        if global_models is not None and not global_models:
            raise ValueError("FedMerge needs at least one global model")
        self.given_models = global_models
        self.num_global_models = (len(global_models) if global_models
                                  else num_global_models)
        self.mu, self.lr_w, self.lr_theta = mu, lr_w, lr_theta
        self.requested_w_tensors, self.w_tensors, self.w_step = w_tensors, w_tensors, w_step
        self.thetas: list[Tensors] = []
        self.w: dict[str, np.ndarray] = {}
        super().__init__(**kwargs)

    def begin(self, initial_arrays: ArrayRecord) -> None:
        """Theta_1..Theta_d (given, or ``shuffled_copies`` of ``initial_arrays``), W
        empty, and ``w_tensors`` as asked, ``auto`` resolved from these tensors: the head
        when they have one."""
        self.thetas = ([dict(t) for t in self.given_models] if self.given_models else
                       shuffled_copies(from_array_record(initial_arrays),
                                       self.num_global_models,
                                       derive_seed(self.seed, "fedmerge-theta")))
        has_head = bool(head_tensor_names(self.thetas[0]))
        if self.requested_w_tensors == "head" and not has_head:
            raise ConfigError("fedmerge.w-tensors = head, but the model has no classifier "
                              "head among its travelling tensors (a causal LM's LoRA): use "
                              "all or auto")
        self.w_tensors = (self.requested_w_tensors if self.requested_w_tensors != "auto"
                          else "head" if has_head else "all")
        self.w = {}
        self.global_arrays = to_array_record(self.uniform_merge())

    def summary(self) -> None:
        log(INFO, "\t├──> FedMerge: d=%d, mu %g, lr_W %g (%s step), lr_Theta %g, W from %s "
            "tensors", len(self.thetas), self.mu, self.lr_w, self.w_step, self.lr_theta,
            self.w_tensors)
        super().summary()

    def weights_of(self, client_id: str) -> np.ndarray:
        """softmax(W_i); a client never seen before has a zero row."""
        return softmax(self.w.setdefault(client_id, np.zeros(len(self.thetas))))

    def merged_for(self, client_id: str) -> Tensors:
        return merge(self.thetas, self.weights_of(client_id))

    def model_for(self, node: int) -> Tensors:
        return self.merged_for(self.directory.client_of(node).client_id)  # theta_i0

    def uniform_merge(self) -> Tensors:
        return merge(self.thetas, np.full(len(self.thetas), 1.0 / len(self.thetas)))

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        config["proximal-mu"] = 2.0 * self.mu
        return super().configure_train(server_round, arrays, config, grid)

    def _w_step(self, p: np.ndarray, g: np.ndarray) -> np.ndarray:
        step = p[:, None] * g
        if self.w_step == "plain":
            return self.lr_w * step
        largest = np.abs(OFFICIAL_W_STEP * step).max()
        repeats = (OFFICIAL_MAX_REPEATS + 1 if largest == 0
                   else min(int(self.lr_w // largest) + 1, OFFICIAL_MAX_REPEATS + 1))
        return repeats * OFFICIAL_W_STEP * step

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        valid = self.valid_replies(replies)
        if not valid:
            return None, None
        clients = [(self.directory.client_of(m.metadata.src_node_id).client_id,
                    self.sent[m.metadata.src_node_id]) for m in valid]
        received = [array_views(m.content[ARRAYS_KEY]) for m in valid]
        counts = np.array([float(m.content["metrics"][self.weighted_by_key]) for m in valid])
        p = counts / counts.sum()
        subset = (head_tensor_names(self.thetas[0]) if self.w_tensors == "head"
                  else list(self.thetas[0]))

        s_before = np.stack([self.weights_of(cid) for cid, _ in clients])
        g = np.zeros((len(valid), len(self.thetas)))
        for k in subset:  # whole tensors, so np.sum's pairwise order is the tensor's own
            for a, ((_, theta0), reply) in enumerate(zip(clients, received)):
                anchor = theta0[k].astype(np.float64)
                delta = anchor - reply[k]
                for j, theta in enumerate(self.thetas):
                    g[a, j] += float(np.sum((theta[k] - anchor) * delta))
        g = s_before * g
        if np.abs(g).sum() > 0:
            g = g / np.abs(g).sum()
        for (cid, _), step in zip(clients, self._w_step(p, g)):
            self.w[cid] = self.w[cid] - step

        s_after = np.stack([self.weights_of(cid) for cid, _ in clients])
        mix = p[:, None] * s_after
        mix = mix / mix.sum(axis=0, keepdims=True)
        self.thetas = theta_step(self.thetas, [theta0 for _, theta0 in clients], received,
                                 mix, self.lr_theta)
        self.global_arrays = to_array_record(self.uniform_merge())
        metrics = self.train_metrics_aggr_fn([m.content for m in valid], self.weighted_by_key)
        return self.global_arrays, metrics

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]
                           ) -> MetricRecord | None:
        metrics = super().aggregate_evaluate(server_round, replies)
        accuracy = None if metrics is None else accuracy_of(metrics)
        if accuracy is not None:
            metrics["personalized_accuracy"] = accuracy
        return metrics

    def round_records(self, server_round: int) -> dict[str, dict]:
        return {"merge_weights.jsonl": {
            "round": server_round,
            "weights": {cid: self.weights_of(cid).round(6).tolist()
                        for cid in sorted(self.w, key=lambda c: (len(c), c))}}}

    def final_models(self) -> dict[str, Tensors]:
        uniform = self.uniform_merge()
        models = {"model": uniform, "adapters/uniform": uniform}
        models.update({f"adapters/global-{j}": theta for j, theta in enumerate(self.thetas)})
        models.update({f"adapters/clients/{cid}": self.merged_for(cid) for cid in self.w})
        return models

    def state_dict(self) -> StrategyState:
        state = super().state_dict()
        for j, theta in enumerate(self.thetas):
            state["tensors"].update(prefixed(theta, f"theta/{j}/"))
        clients = sorted(self.w)
        if clients:
            state["tensors"]["w"] = np.stack([self.w[c] for c in clients])
        state["meta"].update({"num_global_models": len(self.thetas), "w_clients": clients})
        return state

    def load_state_dict(self, state: StrategyState) -> None:
        super().load_state_dict(state)
        count = state["meta"]["num_global_models"]
        self.thetas = [unprefixed(state["tensors"], f"theta/{j}/") for j in range(count)]
        clients = state["meta"]["w_clients"]
        self.w = {c: np.asarray(state["tensors"]["w"][i], dtype=np.float64)
                  for i, c in enumerate(clients)}
