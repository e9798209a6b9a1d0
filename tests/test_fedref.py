"""FedRef: reference window, MAP step, client proximal anchor, rotation and forgetting."""

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Message, MessageType, RecordDict

from client_app.app import app as client_app
from pollen.adapters import travelling_state
from pollen.config import ConfigError
from pollen.models import build_model
from pollen.records import from_array_record, to_array_record
from pollen.training import proximal_term
from server_app.app import run
from strategies import run_config
from tests.localgrid import LocalGrid
from tests.test_strategies import describe_only, make_strategy, reply_to

SHAPES = {"w": (2, 3), "b": (3,)}


def _update(rng):
    return {k: rng.normal(size=s).astype(np.float32) for k, s in SHAPES.items()}


def _round(strategy, grid, server_round, updates):
    messages = list(strategy.configure_train(server_round, strategy.global_arrays,
                                             ConfigRecord(), grid))
    replies = [reply_to(m, u, n, 1.0) for m, (u, n) in zip(messages, updates)]
    return messages, strategy.aggregate_train(server_round, replies)


@pytest.mark.parametrize("weights", ["recency", "uniform"])
def test_warm_up_then_the_reference_of_the_last_p_aggregates_and_the_exact_map_step(weights):
    grid = LocalGrid.simulation(describe_only, 2)
    lam, p = 0.5, 3
    init = {k: np.full(s, 1.0, np.float32) for k, s in SHAPES.items()}
    strategy = make_strategy(run_config({"strategy": "fedref", "fedref.p": p, "fedref.lambda": lam,
                                         "fedref.reference-weights": weights}),
                             grid, to_array_record(init))
    share = np.array([1, 2, 3] if weights == "recency" else [1, 1, 1]) / (6 if weights == "recency" else 3)
    rng = np.random.default_rng(0)
    aggregates = []
    for server_round in range(1, 7):
        updates = [(_update(rng), 1), (_update(rng), 3)]
        messages, (arrays, metrics) = _round(strategy, grid, server_round, updates)
        agg = {k: (updates[0][0][k] * 0.25 + updates[1][0][k] * 0.75) for k in SHAPES}
        if server_round <= p:  # plain FedAvg: the initial model never enters the reference
            assert "reference" not in messages[0].content.array_records
            assert "proximal-mu" not in messages[0].content["config"]
            assert "fedref_objective" not in metrics
            for k in SHAPES:
                np.testing.assert_allclose(from_array_record(arrays)[k], agg[k], rtol=1e-6)
        else:  # newest aggregate weighted p, oldest 1 (recency), or the plain mean
            expected_ref = {k: sum(w * a[k] for w, a in zip(share, aggregates[-p:]))
                            for k in SHAPES}
            expected_new = {k: (agg[k] + lam * expected_ref[k]) / (1 + lam) for k in SHAPES}
            sent_ref = from_array_record(messages[0].content["reference"])
            for k in SHAPES:
                np.testing.assert_allclose(sent_ref[k], expected_ref[k], rtol=1e-6, atol=1e-7)
                np.testing.assert_allclose(from_array_record(arrays)[k], expected_new[k],
                                           rtol=1e-6, atol=1e-7)
            distance = np.sqrt(sum(((expected_new[k] - expected_ref[k]) ** 2).sum()
                                   for k in SHAPES))
            assert metrics["fedref_reference_distance"] == pytest.approx(distance, rel=1e-5)
            assert metrics["fedref_objective"] == pytest.approx(1.0 + lam * distance ** 2,
                                                                rel=1e-5)
            assert messages[0].content["config"]["proximal-mu"] == 0.01
        aggregates.append(agg)  # the pre-pull aggregate, not the pulled global


def test_client_prox_off_sends_no_reference():
    grid = LocalGrid.simulation(describe_only, 2)
    strategy = make_strategy(run_config({"strategy": "fedref", "fedref.client-prox": False,
                                         "fedref.p": 1}), grid)
    _round(strategy, grid, 1, [(_update(np.random.default_rng(2)), 1)] * 2)  # the warm-up
    message = next(iter(strategy.configure_train(2, strategy.global_arrays, ConfigRecord(), grid)))
    assert "reference" not in message.content.array_records
    assert "proximal-mu" not in message.content["config"]


def test_state_round_trip_keeps_the_window():
    grid = LocalGrid.simulation(describe_only, 2)
    config = run_config({"strategy": "fedref", "fedref.p": 2})
    strategy = make_strategy(config, grid)
    rng = np.random.default_rng(1)
    for server_round in (1, 2, 3):
        _round(strategy, grid, server_round, [(_update(rng), 1), (_update(rng), 1)])
    fresh = make_strategy(config, grid)
    fresh.load_state_dict(strategy.state_dict())
    assert len(fresh.aggregates) == 2
    for k in SHAPES:
        np.testing.assert_array_equal(fresh.reference()[k], strategy.reference()[k])
        np.testing.assert_array_equal(from_array_record(fresh.global_arrays)[k],
                                      from_array_record(strategy.global_arrays)[k])


def test_proximal_term_gradient_is_mu_times_the_distance():
    params = [torch.randn(3, 2, requires_grad=True), torch.randn(4, requires_grad=True)]
    anchor = [torch.randn(3, 2), torch.randn(4)]
    proximal_term(params, anchor, mu=0.3).backward()
    for p, a in zip(params, anchor):
        torch.testing.assert_close(p.grad, 0.3 * (p.detach() - a))


def test_a_client_sent_a_reference_stays_near_the_reference():
    config = run_config({"strategy": "fedref", "local-epochs": 3})
    model = build_model(config, 10)
    start = travelling_state(model)
    reference = {k: v + 0.05 for k, v in start.items()}
    grid = LocalGrid.simulation(client_app, 4)
    node = next(iter(grid.get_node_ids()))

    def trained(mu, with_reference):
        content = RecordDict({"arrays": to_array_record(start), "config": ConfigRecord(
            {**config.to_mapping(), "server-round": 1, "proximal-mu": mu})})
        if with_reference:
            content["reference"] = to_array_record(reference)
        reply = grid.send_and_receive([Message(content, dst_node_id=node,
                                               message_type=MessageType.TRAIN)])[0]
        return from_array_record(reply.content["arrays"])

    def distance(a, b):
        return np.sqrt(sum(((a[k] - b[k]) ** 2).sum() for k in a))

    free, anchored = trained(0.0, True), trained(50.0, True)
    assert distance(anchored, reference) < 0.5 * distance(free, reference)
    to_start = trained(50.0, False)
    assert distance(to_start, start) < distance(anchored, start)


@pytest.mark.parametrize("strategy", ["fedavg", "fedprox", "fedref"])
def test_rotation_trains_a_new_group_each_round_and_measures_the_others(tmp_path, strategy):
    config = run_config({"strategy": strategy, "client-rotation": True, "fraction-train": 0.3,
                         "num-server-rounds": 2, "output-dir": str(tmp_path),
                         "run-name": strategy, "fedref.p": 1})
    grid = LocalGrid.simulation(client_app, 10)
    outputs = run(grid, config)
    trained = [sorted(grid.node_configs[m.metadata.dst_node_id]["partition-id"]
                      for m in grid.sent if m.metadata.message_type == "train"
                      and m.content["config"]["server-round"] == r) for r in (1, 2)]
    assert trained == [[0, 1, 2], [3, 4, 5]]
    rows = outputs.read_metrics()
    assert all(r["nonparticipant_accuracy"] is not None for r in rows)
    assert all(r["participant_accuracy"] is not None for r in rows)
    if strategy == "fedref":  # round 1 is its warm-up
        assert "fedref_objective" not in rows[0] and "fedref_objective" in rows[1]


def test_the_reference_is_counted_in_bytes_down(tmp_path):
    down = {}
    for strategy in ("fedavg", "fedref"):
        config = run_config({"strategy": strategy, "num-server-rounds": 2, "fedref.p": 1,
                             "output-dir": str(tmp_path), "run-name": strategy})
        down[strategy] = run(LocalGrid.simulation(client_app, 3), config).read_metrics()[1]["bytes_down"]
    # round 2, after FedRef's warm-up: fedavg: model to train + model to evaluate;
    # fedref: + the reference
    assert down["fedref"] * 2 == down["fedavg"] * 3


@pytest.mark.parametrize("key, value", [("fedref.p", 0), ("fedref.lambda", -0.1),
                                        ("fedref.mu", -1.0)])
def test_bad_fedref_values_are_named(key, value):
    with pytest.raises(ConfigError, match=key):
        run_config({"strategy": "fedref", key: value})
