"""Strategies fed hand-made reply messages, as Flower tests its own."""

import random

import numpy as np
import pytest
from flwr.app import ConfigRecord, Message, MessageType, MetricRecord, RecordDict

from pollen.config import RunConfig
from pollen.records import from_array_record, to_array_record
from strategies import build_strategy, run_config
from strategies.directory import ClientDirectory, ClientSetupError
from strategies.fedavg import FedAvg
from strategies.spec import ServerSetup
from tests.localgrid import LocalGrid


def describe_only(msg: Message, context) -> Message:
    """A client that only answers the directory's query."""
    about = ConfigRecord({"client-id": f"c{context.node_config['partition-id']}",
                          "num-train": 10, "num-test": 2})
    return Message(RecordDict({"client": about}), reply_to=msg)


def make_strategy(config: RunConfig, grid: LocalGrid, arrays=None):
    directory = ClientDirectory(config.to_mapping(), timeout=10)
    directory.refresh(grid, strict=True)
    tensors = (from_array_record(arrays) if arrays is not None
               else {"w": np.zeros((2, 3), np.float32), "b": np.zeros(3, np.float32)})
    return build_strategy(ServerSetup(config, directory, {}, {config.model: tensors}, 2,
                                      "image"))


def reply_to(message: Message, arrays: dict, num_examples: int, loss: float) -> Message:
    message.metadata.__dict__["_message_id"] = f"m{message.metadata.dst_node_id}"
    content = RecordDict({"arrays": to_array_record(arrays),
                          "metrics": MetricRecord({"num-examples": num_examples,
                                                   "train_loss": loss})})
    return Message(content, reply_to=message)


@pytest.fixture
def grid():
    return LocalGrid.simulation(describe_only, num_nodes=4)


def _train_round(strategy, grid, updates):
    messages = list(strategy.configure_train(1, strategy.global_arrays, ConfigRecord(), grid))
    return [reply_to(m, *updates[i]) for i, m in enumerate(messages)], messages


def test_fedavg_is_the_exact_sample_weighted_mean(grid):
    strategy = make_strategy(RunConfig(), grid)
    rng = np.random.default_rng(0)
    updates = [({"w": rng.normal(size=(2, 3)).astype(np.float32),
                 "b": rng.normal(size=3).astype(np.float32)}, n, float(n)) for n in (1, 2, 3, 4)]
    arrays, metrics = strategy.aggregate_train(1, _train_round(strategy, grid, updates)[0])
    for name in ("w", "b"):
        in_float32 = updates[0][0][name] * (1 / 10)
        for values, n, _ in updates[1:]:
            in_float32 = in_float32 + values[name] * (n / 10)
        np.testing.assert_array_equal(from_array_record(arrays)[name], in_float32)
        exact = sum(u[0][name].astype(np.float64) * u[1] for u in updates) / 10
        np.testing.assert_allclose(from_array_record(arrays)[name], exact, atol=1e-6)
    assert metrics["train_loss"] == pytest.approx((1 + 4 + 9 + 16) / 10)
    assert strategy.global_arrays is arrays


def test_aggregate_does_not_depend_on_reply_order(grid):
    strategy = make_strategy(RunConfig(), grid)
    rng = np.random.default_rng(1)
    updates = [({"w": rng.normal(size=(2, 3)).astype(np.float32),
                 "b": rng.normal(size=3).astype(np.float32) * 1e3}, n, 0.0) for n in (3, 7, 11, 13)]
    replies, _ = _train_round(strategy, grid, updates)
    first, _ = strategy.aggregate_train(1, replies)
    shuffled = replies[::-1]
    random.Random(3).shuffle(shuffled)
    second, _ = strategy.aggregate_train(1, shuffled)
    for name in ("w", "b"):
        assert from_array_record(first)[name].tobytes() == from_array_record(second)[name].tobytes()


def test_error_replies_are_left_out(grid):
    from flwr.app import Error

    strategy = make_strategy(RunConfig(), grid)
    updates = [({"w": np.full((2, 3), float(i), np.float32), "b": np.zeros(3, np.float32)}, 1, 0.0)
               for i in range(4)]
    replies, messages = _train_round(strategy, grid, updates)
    replies[3] = Message(Error(code=1, reason="boom"), reply_to=messages[3])
    arrays, _ = strategy.aggregate_train(1, replies)
    np.testing.assert_allclose(from_array_record(arrays)["w"], np.full((2, 3), 1.0))


def test_sampling_is_seeded_and_keyed_by_client_id():
    config = RunConfig(fraction_train=0.5)

    def sampled(first_node_id, seed, server_round):
        grid = LocalGrid.simulation(describe_only, 10, first_node_id=first_node_id)
        strategy = make_strategy(config.replace(seed=seed), grid)
        messages = strategy.configure_train(server_round, strategy.global_arrays,
                                            ConfigRecord(), grid)
        return [strategy.directory.client_of(m.metadata.dst_node_id).client_id for m in messages]

    chosen = sampled(1000, 42, 1)
    assert len(chosen) == 5
    assert sampled(5000, 42, 1) == chosen  # transport renamed every node: same clients
    assert sampled(1000, 42, 2) != chosen or sampled(1000, 42, 3) != chosen
    assert sampled(1000, 7, 1) != chosen or sampled(1000, 8, 1) != chosen


def test_fedprox_sends_mu_and_fedavg_does_not(grid):
    for name, expected in (("fedprox", 0.25), ("fedavg", None)):
        strategy = make_strategy(run_config({"strategy": name, "fedprox.mu": 0.25}), grid)
        message = next(iter(strategy.configure_train(1, strategy.global_arrays,
                                                     ConfigRecord(), grid)))
        assert message.content["config"].get("proximal-mu") == expected
        assert message.content["config"]["server-round"] == 1
        assert message.metadata.message_type == MessageType.TRAIN


def test_state_round_trip(grid):
    strategy = make_strategy(RunConfig(), grid)
    strategy.global_arrays = to_array_record({"w": np.arange(6, dtype=np.float32).reshape(2, 3),
                                              "b": np.ones(3, np.float32)})
    state = strategy.state_dict()
    fresh = make_strategy(RunConfig(), grid)
    fresh.load_state_dict(state)
    restored = from_array_record(fresh.global_arrays)
    np.testing.assert_array_equal(restored["w"], np.arange(6).reshape(2, 3))
    assert isinstance(fresh.strategy, FedAvg)  # inside the validation wrapper
    with pytest.raises(ValueError, match="cannot be loaded"):
        make_strategy(RunConfig(strategy="fedprox"), grid).load_state_dict(state)


def test_a_client_that_cannot_start_stops_the_run_before_training():
    def broken(msg, context):
        raise ValueError("label column 'y' not found")

    grid = LocalGrid.simulation(broken, 2)
    with pytest.raises(ClientSetupError, match="label column 'y' not found"):
        make_strategy(RunConfig(), grid)


def test_unknown_strategy_is_named(grid):
    from pollen.config import ConfigError

    with pytest.raises(ConfigError, match="unknown strategy 'fedsgd'"):
        make_strategy(RunConfig(strategy="fedsgd"), grid)
