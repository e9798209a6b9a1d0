"""Guided merging and the central baseline: server data, atlas, coefficient search, runs."""

import json

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict

from client_app.app import app as client_app
from pollen.adapters import travelling_state
from pollen.config import ConfigError, RunConfig
from pollen.data import client_split, load_task, noisy_clients
from pollen.models import build_model
from pollen.records import from_array_record, to_array_record
from pollen.seeding import derive_seed
from pollen.server_data import load_server_data
from server_app.app import run
from strategies import build_strategy, run_config
from strategies.directory import ClientDirectory
from strategies.guided.atlas import AtlasEntry, ModelAtlas
from strategies.guided.client import GLOBAL_ROUND_KEY
from strategies.spec import ServerSetup
from tests.localgrid import LocalGrid
from tests.test_strategies import describe_only

HYBRID = {"strategy": "guided", "server-data-fraction": 0.05}


def guided(grid, **overrides):
    """The real guided strategy on digits + CNN, over a grid of describe-only clients."""
    config = run_config({**HYBRID, **overrides})
    task = load_task(config)
    model = build_model(config, task.num_classes)
    directory = ClientDirectory(config.to_mapping(), timeout=10)
    directory.refresh(grid, strict=True)
    return build_strategy(ServerSetup(config, directory, {config.model: model},
                                      {config.model: travelling_state(model)},
                                      task.num_classes, task.modality,
                                      load_server_data(config, task)))


def trained_like(base, seed, scale=0.05):
    rng = np.random.default_rng(seed)
    return {k: (v + rng.normal(size=v.shape) * scale).astype(np.float32) for k, v in base.items()}


def reply(message, tensors, num_examples, stamp="sent"):
    message.metadata.__dict__["_message_id"] = f"m{message.metadata.dst_node_id}"
    metrics = {"num-examples": num_examples, "train_loss": 0.5}
    if stamp == "sent":
        metrics[GLOBAL_ROUND_KEY] = int(message.content["config"][GLOBAL_ROUND_KEY])
    elif stamp is not None:
        metrics[GLOBAL_ROUND_KEY] = stamp
    return Message(RecordDict({"arrays": to_array_record(tensors),
                               "metrics": MetricRecord(metrics)}), reply_to=message)


def train_round(strategy, grid, server_round, counts, seed=0, **reply_options):
    messages = list(strategy.configure_train(server_round, strategy.global_arrays,
                                             ConfigRecord(), grid))
    base = from_array_record(strategy.global_arrays)
    replies = [reply(m, trained_like(base, seed + i), counts[i % len(counts)], **reply_options)
               for i, m in enumerate(messages)]
    return strategy.aggregate_train(server_round, replies)


@pytest.fixture
def grid():
    return LocalGrid.simulation(describe_only, num_nodes=4)


# --- server-held data -------------------------------------------------------------------

def test_server_data_is_taken_out_of_the_pool_before_partitioning():
    config = run_config(HYBRID)
    task = load_task(config)
    plain = load_task(RunConfig())
    held = task.server_held
    assert len(held) == round(0.05 * len(plain.pool))
    assert len(task.pool) + len(held) == len(plain.pool)
    assert list(task.server_test["pixels"]) == list(plain.server_test["pixels"])
    held_rows = {tuple(p) for p in list(held["pixels"])}
    for partition in range(10):
        train, test = client_split(task, config, partition, 10)
        assert not held_rows & {tuple(p) for p in list(train["pixels"]) + list(test["pixels"])}
    server = load_server_data(config, task)
    assert len(server) == len(held) and len(server.holdout) == round(0.25 * len(held))
    assert {tuple(p) for p in list(server.search["pixels"]) + list(server.holdout["pixels"])} == held_rows


def test_digits_shifted_moves_the_pixels_and_keeps_the_labels():
    config = run_config({**HYBRID, "server-data": "digits-shifted"})
    shifted = load_server_data(config, load_task(config))
    same = load_server_data(run_config(HYBRID), load_task(config))
    assert list(shifted.search["label"]) == list(same.search["label"])
    difference = np.abs(np.array(list(shifted.search["pixels"])) - np.array(list(same.search["pixels"])))
    assert difference.mean() > 0.1
    assert 0.0 <= np.min(list(shifted.search["pixels"])) and np.max(list(shifted.search["pixels"])) <= 1.0
    # the shift grows with server-data-rotation (0 degrees: the pixel noise alone)
    moved = []
    for degrees in (0.0, 10.0, 30.0):
        rotated = load_server_data(run_config({**HYBRID, "server-data": "digits-shifted",
                                               "server-data-rotation": degrees}),
                                   load_task(config))
        moved.append(np.abs(np.array(list(rotated.search["pixels"]))
                            - np.array(list(same.search["pixels"]))).mean())
    assert moved[0] < moved[1] < moved[2] == pytest.approx(difference.mean())


def test_an_unlabeled_server_file_means_entropy_minimisation(tmp_path, topics_csv):
    unlabeled = tmp_path / "server.csv"
    unlabeled.write_text("text\nrocket orbit moon\nbank market shares\nband album tour\n"
                         "match goal team\n")
    common = {"dataset": str(topics_csv), "model": "tiny-bert", "server-data": str(unlabeled)}
    with pytest.raises(ConfigError, match="no label column 'label'.*server-data-labeled"):
        config = run_config({**common, "strategy": "guided"})
        load_server_data(config, load_task(config))
    config = run_config({**common, "strategy": "guided",
                                     "server-data-labeled": False})
    server = load_server_data(config, load_task(config))
    assert not server.labeled and len(server) == 4 and set(list(server.search["label"])) == {-1}
    with pytest.raises(ConfigError, match="central.*server-data-labeled = true"):
        run_config({**common, "strategy": "central", "server-data-labeled": False})


@pytest.mark.parametrize("overrides, message", [
    ({"server-data-fraction": 1.0}, r"server-data-fraction must be in \(0, 1\)"),
    ({"server-data-fraction": -0.1}, r"server-data-fraction must be in \(0, 1\)"),
    ({"server-data-fraction": 0.0}, "strategy 'guided' needs server-held data"),
    ({"server-data-fraction": 0.0, "strategy": "central"}, "'central' needs server-held data"),
    ({"server-data": "digits-shifted", "dataset": "__TEXT__"}, "needs dataset 'digits'"),
    ({"server-data": "rotated"}, "unknown server-data 'rotated'"),
    ({"server-data-holdout": 1.0}, r"server-data-holdout must be in \(0, 1\)"),
    ({"guided.search-steps": 0}, "guided.search-steps must be >= 1"),
    ({"client-label-noise": 1.5}, r"client-label-noise must be in \[0, 1\]"),
    ({"guided.granularity": "layerwise"}, "unknown guided.granularity"),
])
def test_bad_hybrid_settings_are_refused_before_training(overrides, message, topics_csv):
    values = {**HYBRID, **overrides}
    if values.get("dataset") == "__TEXT__":
        values.update(dataset=str(topics_csv), model="tiny-bert")
    with pytest.raises(ConfigError, match=message):
        run_config(values)


def test_an_empty_server_set_is_refused():
    config = run_config({**HYBRID, "server-data-fraction": 0.001})
    with pytest.raises(ConfigError, match="server set would be empty or miss classes"):
        load_task(config)


def test_label_noise_flips_the_chosen_share_of_noisy_clients_only():
    noisy = run_config({"client-label-noise": 0.5, "noisy-client-fraction": 0.3})
    chosen = noisy_clients(noisy, 10)
    assert len(chosen) == 3
    for partition in range(10):
        clean_train, clean_test = client_split(load_task(RunConfig()), RunConfig(), partition, 10)
        train, test = client_split(load_task(noisy), noisy, partition, 10)
        assert list(train["pixels"]) == list(clean_train["pixels"]) and list(test["label"]) == list(clean_test["label"])
        flipped = sum(a != b for a, b in zip(list(train["label"]), list(clean_train["label"])))
        assert flipped == (round(0.5 * len(train)) if partition in chosen else 0)


# --- the atlas ----------------------------------------------------------------------------

def entry(client, stamp, value):
    return AtlasEntry(client, stamp, 10, {"w": np.full(3, value, np.float32)})


def test_atlas_refuses_non_finite_and_replaces_a_clients_older_update():
    atlas = ModelAtlas(size=3, max_staleness=2, patience=2)
    assert atlas.admit(entry("a", 0, np.nan))[0]["reason"] == "non-finite update refused"
    assert atlas.admit(entry("a", 0, np.inf))[0]["reason"] == "non-finite update refused"
    assert atlas.admit(entry("a", 0, 0.0))[0]["reason"] == "all-zero update refused"
    assert atlas.entries == []
    atlas.admit(entry("a", 0, 1.0))
    departed = atlas.admit(entry("a", 1, 2.0))
    assert [e.round for e in atlas.entries] == [1] and "newer update" in departed[0]["reason"]
    atlas.admit(entry("b", 1, 1.0))
    atlas.admit(entry("c", 2, 1.0))
    departed = atlas.admit(entry("d", 3, 1.0))
    assert [e.client_id for e in atlas.entries] == ["b", "c", "d"]
    assert departed == [{"client": "a", "round": 1, "reason": "atlas full (size 3)"}]


def test_stale_updates_stay_usable_within_max_staleness_rounds():
    atlas = ModelAtlas(size=10, max_staleness=2, patience=2)
    for client, stamp in (("a", 0), ("b", 1), ("c", 2)):
        atlas.admit(entry(client, stamp, 1.0))
    assert atlas.drop_stale(2) == []
    departed = atlas.drop_stale(3)
    assert [d["client"] for d in departed] == ["a"] and "stale (3 rounds" in departed[0]["reason"]
    assert [e.client_id for e in atlas.entries] == ["b", "c"]


def test_an_update_with_nonpositive_coefficients_for_k_searches_leaves():
    atlas = ModelAtlas(size=10, max_staleness=5, patience=2)
    for client in "abc":
        atlas.admit(entry(client, 0, 1.0))
    assert atlas.record_search(np.array([0.5, -0.1, 0.0])) == []
    assert [e.nonpositive_searches for e in atlas.entries] == [0, 1, 1]
    evicted = atlas.record_search(np.array([[0.5, 0.2], [-0.1, -0.3], [0.1, -0.2]]))
    assert [e["client"] for e in evicted] == ["b"]
    assert [(e.client_id, e.nonpositive_searches) for e in atlas.entries] == [("a", 0), ("c", 0)]


# --- the strategy, with hand-built replies ------------------------------------------------

@pytest.mark.parametrize("granularity", ["vector", "tensor"])
def test_coefficient_initialisation_reproduces_fedavg_exactly(grid, granularity):
    strategy = guided(grid, **{"guided.granularity": granularity})
    base = from_array_record(strategy.global_arrays)
    messages = list(strategy.configure_train(1, strategy.global_arrays, ConfigRecord(), grid))
    counts = [5, 17, 3, 40]
    trained = [trained_like(base, i) for i in range(len(messages))]
    updates = [{k: t[k] - base[k] for k in base} for t in trained]
    outcome = strategy.search.merge(base, updates, counts, seed=0)
    total = sum(counts)
    for name in base:
        fedavg = sum(t[name].astype(np.float64) * n / total for t, n in zip(trained, counts))
        np.testing.assert_allclose(outcome.plain_average[name], fedavg, atol=1e-6)
    # The merge at the start coefficients, through the same anchors, is that average.
    anchors, norms = strategy.search._anchors(sorted(base), updates)
    start, _, _ = strategy.search._start_and_bounds(norms, np.array(counts) / total)
    for i, name in enumerate(sorted(base)):
        column = start if start.ndim == 1 else start[:, i]
        at_start = base[name] + torch.tensordot(torch.tensor(column, dtype=torch.float32),
                                                anchors[name], dims=1).numpy()
        np.testing.assert_allclose(at_start, outcome.plain_average[name], atol=1e-6)
    assert start.shape == ((4,) if granularity == "vector" else (4, len(base)))
    # And Flower's FedAvg of the same replies agrees.
    inner = strategy.strategy  # inside the validation wrapper
    fedavg_arrays, _ = super(type(inner), inner).aggregate_train(
        1, [reply(m, t, n) for m, t, n in zip(messages, trained, counts)])
    for name, value in from_array_record(fedavg_arrays).items():
        np.testing.assert_allclose(value, outcome.plain_average[name], atol=1e-6)


@pytest.mark.parametrize("search_lr", [0.01, 50.0])
def test_the_chosen_merge_is_never_worse_than_the_average_on_held_out_data(grid, search_lr):
    # the paper's free search (no trust region, no server member), where overshoot happens
    strategy = guided(grid, **{"guided.search-lr": search_lr, "guided.trust-region": 0.0,
                               "guided.server-member": False})
    for server_round in (1, 2, 3):
        train_round(strategy, grid, server_round, [10, 20, 30, 40], seed=10 * server_round,
                    )
        fields = strategy.round_metrics()
        chosen = from_array_record(strategy.global_arrays)
        searched_wins = fields["guided_holdout_loss_searched"] < fields[
            "guided_holdout_loss_average"]
        assert fields["guided_fallback"] == (not searched_wins)
        held_out = strategy.search._mean_loss(
            {strategy.search.module_names[n]: torch.as_tensor(v) for n, v in chosen.items()},
            strategy.search.holdout_set)[0]
        assert held_out <= fields["guided_holdout_loss_average"] + 1e-6
    if search_lr == 50.0:  # steps that large overshoot: the average must have won
        assert fields["guided_fallback"]


@pytest.mark.parametrize("granularity", ["vector", "tensor"])
def test_the_search_stays_in_the_trust_region_around_fedavg(grid, granularity):
    """Client m's coefficient stays within (1 -+ rho) of FedAvg's; a large search lr
    pushes some onto a bound."""
    rho = 0.5
    strategy = guided(grid, **{"guided.granularity": granularity, "guided.search-lr": 5.0,
                               "guided.trust-region": rho})
    base = from_array_record(strategy.global_arrays)
    updates = [{k: t[k] - base[k] for k in base}
               for t in (trained_like(base, i, scale=0.2) for i in range(4))]
    outcome = strategy.search.merge(base, updates, [10, 20, 30, 40], seed=0)
    start, c = outcome.start_coefficients, outcome.coefficients
    assert np.all(c >= (1 - rho) * start - 1e-5) and np.all(c <= (1 + rho) * start + 1e-5)
    on_bound = (np.isclose(c, (1 - rho) * start, atol=1e-5)
                | np.isclose(c, (1 + rho) * start, atol=1e-5))
    assert on_bound.any()


def test_a_tiny_trust_region_without_a_server_member_is_fedavg(grid):
    strategy = guided(grid, **{"guided.trust-region": 1e-9, "guided.server-member": False})
    train_round(strategy, grid, 1, [10, 20, 30, 40])
    fields = strategy.round_metrics()
    assert all(m["c"] == pytest.approx(m["start"], rel=1e-6)
               for m in fields["guided_coefficients"])
    assert fields["guided_holdout_loss_searched"] == pytest.approx(
        fields["guided_holdout_loss_average"], rel=1e-5)


@pytest.mark.parametrize("member", [True, False])
def test_the_server_member_replaces_the_merge_only_when_it_wins_on_held_out_data(grid, member):
    """Clients' updates that are pure noise: the server's own model, trained on the search
    part of labelled D_s, has the lowest held-out loss and becomes the global; without
    the member the merge stays."""
    strategy = guided(grid, **{"lr": 0.01, "local-epochs": 5,
                               "guided.server-member": member})
    base = from_array_record(strategy.global_arrays)
    train_round(strategy, grid, 1, [10, 20, 30, 40])
    fields = strategy.round_metrics()
    chosen = from_array_record(strategy.global_arrays)
    if member:
        assert fields["guided_choice"] == "server"
        assert fields["guided_holdout_loss_server_member"] < min(
            fields["guided_holdout_loss_searched"], fields["guided_holdout_loss_average"])
        held_out = strategy.search.holdout_loss(chosen)
        assert held_out[0] == pytest.approx(fields["guided_holdout_loss_server_member"])
        assert held_out[1] > fields["guided_holdout_accuracy_average"]
        trained, _ = strategy.server_member.run(base, 1, derive_seed(strategy.seed, "guided-server-member", 1))
        assert all(np.array_equal(chosen[k], trained[k]) for k in chosen)  # seeded: the same
    else:
        assert fields["guided_choice"] in ("searched", "average")
        assert fields["guided_holdout_loss_server_member"] is None


def test_unstamped_replies_are_this_round_s_and_unknown_stamps_are_rejected(grid):
    """A plain Flower client echoes no stamp: in Flower's synchronous round its update
    is against the global it was sent now. A stamp the server does not keep is refused."""
    strategy = guided(grid)
    messages = list(strategy.configure_train(1, strategy.global_arrays, ConfigRecord(), grid))
    base = from_array_record(strategy.global_arrays)
    replies = [reply(messages[0], trained_like(base, 0), 10),
               reply(messages[1], trained_like(base, 1), 10, stamp=None),
               reply(messages[2], trained_like(base, 2), 10, stamp=7),
               reply(messages[3], trained_like(base, 3), 10, stamp=float("nan"))]
    arrays, _ = strategy.aggregate_train(1, replies)
    assert arrays is not None
    assert sorted(strategy.rejected.values()) == [
        "client c2: reply stamped with global 7, which the server does not keep (it keeps [0])",
        "client c3: reply stamped with global nan, which the server does not keep (it keeps [0])"]
    coefficients = strategy.round_metrics()["guided_coefficients"]
    assert [(c["client"], c["round"]) for c in coefficients] == [("c0", 0), ("c1", 0)]


def test_a_non_finite_reply_never_enters_the_atlas(grid):
    strategy = guided(grid)
    messages = list(strategy.configure_train(1, strategy.global_arrays, ConfigRecord(), grid))
    base = from_array_record(strategy.global_arrays)
    poisoned = trained_like(base, 1)
    poisoned[sorted(poisoned)[0]][0] = np.nan
    replies = [reply(messages[0], trained_like(base, 0), 10), reply(messages[1], poisoned, 10)]
    strategy.aggregate_train(1, replies)
    assert [e.client_id for e in strategy.atlas.entries] == ["c0"]
    assert "non-finite" in strategy.rejected[messages[1].metadata.dst_node_id]


def test_partial_participation_keeps_stale_updates_within_the_window(grid):
    strategy = guided(grid, **{"fraction-train": 0.5, "guided.max-staleness": 1})
    stamps = []
    for server_round in (1, 2, 3):
        train_round(strategy, grid, server_round, [10], seed=server_round)
        stamps.append(sorted((e["client"], e["round"]) for e in
                             strategy.round_metrics()["guided_coefficients"]))
    assert all(len(s) >= 2 for s in stamps)
    assert {r for _, r in stamps[0]} == {0}
    assert {r for _, r in stamps[2]} <= {1, 2} and 2 in {r for _, r in stamps[2]}
    assert all(server_round - 1 - r <= 1 for server_round, s in zip((1, 2, 3), stamps)
               for _, r in s)
    assert sorted(strategy.globals) == [2, 3]


def test_state_round_trip_gives_the_same_next_round(grid):
    strategy = guided(grid, **{"fraction-train": 0.5})
    for server_round in (1, 2):
        train_round(strategy, grid, server_round, [10, 30], seed=server_round)
    state = strategy.state_dict()
    restored = guided(grid, **{"fraction-train": 0.5})
    restored.load_state_dict(json.loads(json.dumps({"meta": state["meta"], "tensors": {}}))
                             | {"tensors": state["tensors"]})
    assert [(e.client_id, e.round, e.nonpositive_searches) for e in restored.atlas.entries] == \
        [(e.client_id, e.round, e.nonpositive_searches) for e in strategy.atlas.entries]
    a, _ = train_round(strategy, grid, 3, [10, 30], seed=3)
    b, _ = train_round(restored, grid, 3, [10, 30], seed=3)
    for name, value in from_array_record(a).items():
        assert value.tobytes() == from_array_record(b)[name].tobytes()
    assert strategy.round_metrics()["guided_coefficients"] == \
        restored.round_metrics()["guided_coefficients"]


@pytest.mark.parametrize("overrides, per_round", [({"local-epochs": 2}, "2 epoch(s) a round"),
                                                  ({"max-steps": 7}, "7 step(s) a round")])
def test_central_summary_says_how_much_the_server_trains_a_round(grid, overrides, per_round):
    """Flower's logger does not propagate to the root logger, so the test listens on it."""
    import logging

    lines: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())
    logging.getLogger("flwr").addHandler(handler)
    try:
        guided(grid, strategy="central", **overrides).summary()
    finally:
        logging.getLogger("flwr").removeHandler(handler)
    central = [line for line in lines if "Central (server-only)" in line]
    assert len(central) == 1 and per_round in central[0], lines


# --- whole runs ---------------------------------------------------------------------------

@pytest.mark.parametrize("strategy", ["guided", "central"])
def test_two_rounds_end_to_end(tmp_path, strategy):
    config = run_config({**HYBRID, "strategy": strategy, "num-server-rounds": 2,
                                     "output-dir": str(tmp_path), "run-name": strategy,
                                     "partitioner": "dirichlet", "dirichlet-alpha": 0.1})
    outputs = run(LocalGrid.simulation(client_app, num_nodes=5), config)
    rows = outputs.read_metrics()
    assert [r["round"] for r in rows] == [1, 2]
    assert rows[-1]["eval_accuracy"] > 0.2  # chance is 0.1
    if strategy == "guided":
        assert rows[-1]["num_replies"] == 5 and rows[-1]["guided_atlas_size"] == 5
        for row in rows:
            assert isinstance(row["guided_fallback"], bool)
            # the classifier's budget (SEARCH_BUDGET), and the search moved c off FedAvg's
            assert row["guided_search_steps"] == len(row["guided_search_losses"]) == 20
            assert any(c["c"] != c["start"] for c in row["guided_coefficients"])
            assert [c["round"] for c in row["guided_coefficients"]] == [row["round"] - 1] * 5
            assert row["guided_choice"] in ("searched", "average", "server")
    else:
        assert rows[-1]["num_replies"] == 0 and rows[-1]["bytes_up"] == 0
        assert rows[-1]["client_accuracy"] is not None
    assert (outputs.run_dir / "model" / "model.safetensors").is_file()


def test_information_maximisation_prefers_diverse_predictions_to_a_collapse():
    from strategies.guided.coefficient_search import server_loss

    unlabeled = torch.full((4,), -1)
    collapsed = torch.tensor([[20.0, 0.0, 0.0, 0.0]] * 4)  # one confident class for all
    diverse = torch.eye(4) * 20.0  # confident, and spread over the classes
    assert server_loss(collapsed, unlabeled, "entropy").item() == pytest.approx(
        server_loss(diverse, unlabeled, "entropy").item(), abs=1e-6)
    assert server_loss(diverse, unlabeled, "im") < server_loss(collapsed, unlabeled, "im") - 1.0
    assert server_loss(diverse, unlabeled, "im").item() == pytest.approx(-np.log(4), abs=1e-4)
