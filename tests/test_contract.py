"""A plain Flower ClientApp that follows only the message contract written in the
strategies' docstrings (no Pollen code on the client) takes part in a run that Flower's
own ``Strategy.start()`` drives.

The client holds a "model" that is a point: it trains by moving halfway from what it
was sent towards its own target, weighted by its example count, so FedAvg's global model
moves towards the example-weighted mean of the targets.
"""

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from pollen.adapters import travelling_state
from pollen.models import build_model
from strategies import build_strategy, run_config
from strategies.directory import ClientDirectory
from strategies.spec import ServerSetup
from tests.localgrid import LocalGrid

SIZES = {0: 10, 1: 30}  # examples per client
seen: dict[str, list] = {}


def contract_client() -> ClientApp:
    app = ClientApp()

    def target(context: Context, like: dict) -> dict:
        offset = 1.0 + int(context.node_config["partition-id"])
        return {k: np.full_like(v, offset) for k, v in like.items()}

    @app.query()
    def describe(msg: Message, context: Context) -> Message:
        partition = int(context.node_config["partition-id"])
        about = ConfigRecord({"client-id": str(partition), "num-train": SIZES[partition],
                              "num-test": 5, "family": str(msg.content["config"]["model"])})
        return Message(RecordDict({"client": about}), reply_to=msg)

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        sent = msg.content["arrays"].to_numpy_ndarrays()
        names = list(msg.content["arrays"].keys())
        goal = target(context, dict(zip(names, sent)))
        config = msg.content["config"]
        seen.setdefault("config", []).append(dict(config))
        seen.setdefault("records", []).append(sorted(msg.content.array_records))
        new = {n: (s + 0.5 * (goal[n] - s)).astype(np.float32) for n, s in zip(names, sent)}
        partition = int(context.node_config["partition-id"])
        metrics = {"num-examples": SIZES[partition], "train_loss": 1.0 / (1 + partition)}
        if "global-round" in config:  # guided merging's stamp, echoed
            metrics["global-round"] = int(config["global-round"])
        seen.setdefault("replies", []).append(partition)
        return Message(RecordDict({"arrays": ArrayRecord({n: Array(a) for n, a in new.items()}),
                                   "metrics": MetricRecord(metrics)}), reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        metrics = MetricRecord({"num-examples": 5, "eval_loss": 0.5, "eval_accuracy": 0.5})
        return Message(RecordDict({"metrics": metrics}), reply_to=msg)

    return app


@pytest.mark.parametrize("method", ["fedavg", "fedprox", "fedref", "fedmerge"])
def test_a_plain_client_app_following_the_contract_takes_part(method):
    seen.clear()
    # FedRef with p = 1: its round 1 is the plain-FedAvg warm-up, rounds 2-3 pull
    config = run_config({"strategy": method, "num-server-rounds": 3,
                         **({"fedref.p": 1} if method == "fedref" else {})})
    model = build_model(config, 10)
    grid = LocalGrid.simulation(contract_client(), 2)
    directory = ClientDirectory({**config.to_mapping(), "label-names": [str(i) for i in range(10)]},
                                timeout=10)
    directory.refresh(grid, strict=True)
    start = travelling_state(model)
    strategy = build_strategy(ServerSetup(config, directory, {config.model: model},
                                          {config.model: start}, 10, "image"))
    result = strategy.start(grid, strategy.global_arrays, num_rounds=3, timeout=10)
    assert not strategy.rejected
    # every train message was answered with a model, and the run ends with one
    assert seen["replies"] == [0, 1] * 3
    assert list(result.arrays.keys()) == list(start)
    final = result.arrays.to_numpy_ndarrays()
    assert all(np.isfinite(a).all() for a in final)
    # Every message carried the run's config, and the method's own keys.
    assert all(c["strategy"] == method and c["seed"] == config.seed for c in seen["config"])
    pulled = slice(2, None) if method == "fedref" else slice(None)
    if method in ("fedprox", "fedref", "fedmerge"):
        assert all(c["proximal-mu"] > 0 for c in seen["config"][pulled])
    if method == "fedref":
        assert len(seen["records"]) == 6
        assert not any("reference" in r or "proximal-mu" in c
                       for r, c in zip(seen["records"][:2], seen["config"][:2]))
        assert all("reference" in records for records in seen["records"][pulled])
    if method == "fedavg":  # three halvings towards the weighted mean target 1.75
        expected = {k: 1.75 + (v - 1.75) * 0.125 for k, v in start.items()}
        for name, value in zip(result.arrays.keys(), final):
            np.testing.assert_allclose(value, expected[name], rtol=1e-5, atol=1e-5)
