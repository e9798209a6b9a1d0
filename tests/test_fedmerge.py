"""FedMerge: per-client merges, the W and Theta steps by hand, identity, outputs."""

import numpy as np
import pytest
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict

from client_app.app import app as client_app
from pollen.adapters import reinitialise_travelling
from pollen.config import ConfigError, RunConfig
from pollen.models import build_model
from pollen.records import from_array_record, to_array_record
from server_app.app import run
from strategies import run_config
from strategies.directory import ClientDirectory
from strategies.aggregate import CHUNK
from strategies.fedmerge import FedMerge
from strategies.fedmerge.strategy import theta_step
from strategies.validation import ValidatedUpdates
from tests.localgrid import LocalGrid
from tests.test_strategies import describe_only

SHAPES = {"classifier.weight": (2, 2), "body": (3,)}


def fedmerge(grid, thetas, **overrides):
    settings = dict(mu=0.01, lr_w=2.0, lr_theta=0.5, w_tensors="head", w_step="plain")
    settings.update(overrides)
    directory = ClientDirectory(RunConfig().to_mapping(), timeout=10)
    directory.refresh(grid, strict=True)
    return ValidatedUpdates(FedMerge(global_models=thetas, directory=directory, seed=0,
                                     initial_arrays=to_array_record(thetas[0]),
                                     min_train_nodes=1, min_evaluate_nodes=1,
                                     min_available_nodes=1, **settings))


def random_models(count, seed=0):
    rng = np.random.default_rng(seed)
    return [{k: rng.normal(size=s).astype(np.float32) for k, s in SHAPES.items()}
            for _ in range(count)]


def answer(message, tensors, num_examples):
    message.metadata.__dict__["_message_id"] = f"m{message.metadata.dst_node_id}"
    return Message(RecordDict({"arrays": to_array_record(tensors), "metrics": MetricRecord(
        {"num-examples": num_examples, "train_loss": 0.5})}), reply_to=message)


def softmax(x):
    e = np.exp(x - x.max())
    return e / e.sum()


def test_w_and_theta_steps_match_a_hand_computation():
    grid = LocalGrid.simulation(describe_only, 2)
    thetas = random_models(3)
    strategy = fedmerge(grid, thetas)
    strategy.w = {"c0": np.array([0.2, -0.1, 0.0]), "c1": np.array([0.0, 0.5, -0.3])}
    messages = list(strategy.configure_train(1, strategy.global_arrays, ConfigRecord(), grid))
    rng = np.random.default_rng(7)
    trained, counts = [], [30, 10]
    for message in messages:
        sent = from_array_record(message.content["arrays"])
        trained.append({k: v + rng.normal(size=v.shape).astype(np.float32) * 0.1
                        for k, v in sent.items()})
    strategy.aggregate_train(1, [answer(m, t, n) for m, t, n in zip(messages, trained, counts)])

    # by hand, in float64, client by client
    w = {"c0": np.array([0.2, -0.1, 0.0]), "c1": np.array([0.0, 0.5, -0.3])}
    p = np.array(counts) / 40
    s = [softmax(w["c0"]), softmax(w["c1"])]
    theta0 = [{k: sum(s[i][j] * thetas[j][k].astype(np.float64) for j in range(3))
               for k in SHAPES} for i in range(2)]
    delta = [{k: theta0[i][k] - trained[i][k] for k in SHAPES} for i in range(2)]
    g = np.zeros((2, 3))
    for i in range(2):
        for j in range(3):
            head = "classifier.weight"
            g[i, j] = s[i][j] * np.sum((thetas[j][head] - theta0[i][head]) * delta[i][head])
    g /= np.abs(g).sum()
    new_w = {c: w[c] - 2.0 * p[i] * g[i] for i, c in enumerate(("c0", "c1"))}
    for c in new_w:
        np.testing.assert_allclose(strategy.w[c], new_w[c], rtol=1e-5, atol=1e-7)
    s_new = [softmax(new_w["c0"]), softmax(new_w["c1"])]
    for j in range(3):
        norm = p[0] * s_new[0][j] + p[1] * s_new[1][j]
        for k in SHAPES:
            step = sum(p[i] * s_new[i][j] / norm * delta[i][k] for i in range(2))
            np.testing.assert_allclose(strategy.thetas[j][k], thetas[j][k] - 0.5 * step,
                                       rtol=1e-5, atol=1e-6)
    uniform = from_array_record(strategy.global_arrays)
    for k in SHAPES:
        np.testing.assert_allclose(uniform[k], np.mean([t[k] for t in strategy.thetas], axis=0),
                                   rtol=1e-6, atol=1e-7)


def test_the_streamed_theta_step_is_bit_for_bit_the_whole_tensor_formula():
    rng = np.random.default_rng(3)
    shapes = {"big": (2, CHUNK + 5), "small": (3, 4)}
    thetas, anchors, received = ([{k: rng.normal(size=s).astype(np.float32) for k, s in
                                   shapes.items()} for _ in range(n)] for n in (3, 4, 4))
    mix = rng.random((4, 3))
    stepped = theta_step(thetas, anchors, received, mix, 0.7)
    for j, theta in enumerate(thetas):
        for k in shapes:
            expected = (theta[k] - 0.7 * sum(mix[a, j] * (anchors[a][k].astype(np.float64)
                                                          - received[a][k])
                                              for a in range(4))).astype(np.float32)
            assert stepped[j][k].dtype == np.float32
            assert np.array_equal(stepped[j][k], expected), (j, k)


def test_official_w_step_equals_the_official_loop():
    grid = LocalGrid.simulation(describe_only, 2)
    strategy = fedmerge(grid, random_models(2), w_step="official", lr_w=0.3)
    p, g = np.array([0.25, 0.75]), np.array([[0.1, -0.2], [0.3, -0.4]])
    w = np.zeros((2, 2))
    for n in range(1, 10_002):  # the official code's loop
        w = w - 0.01 * p[:, None] * g
        if np.any(np.abs(w) > 0.3) or n > 10_000:
            break
    np.testing.assert_allclose(-strategy._w_step(p, g), w, rtol=1e-9)


def test_default_w_step_moves_w_as_far_with_two_clients_as_with_ten():
    """#19: methods.md's plain step shrinks with the square of the client count, so a lr_W
    sized for 10 clients saturates W with 2; the default (official) step does not."""
    grid = LocalGrid.simulation(describe_only, 2)
    defaults = run_config({"strategy": "fedmerge"}).method
    assert defaults.w_step == "official"
    rng = np.random.default_rng(3)
    largest = {}
    for step in ("official", "plain"):
        strategy = fedmerge(grid, random_models(3), w_step=step, lr_w=defaults.lr_w)
        for clients in (2, 10):
            g = rng.normal(size=(clients, 3))
            g = g / np.abs(g).sum()
            largest[step, clients] = np.abs(strategy._w_step(np.full(clients, 1 / clients),
                                                              g)).max()
    for clients in (2, 10):
        assert defaults.lr_w < largest["official", clients] < 1.01 * defaults.lr_w
    assert largest["plain", 2] > 10 * largest["plain", 10]


def test_each_client_gets_its_own_merge_and_keeps_it_when_renamed():
    thetas = random_models(3)
    grid = LocalGrid.simulation(describe_only, 2)
    strategy = fedmerge(grid, thetas)
    strategy.w = {"c0": np.array([3.0, 0.0, 0.0]), "c1": np.array([0.0, 0.0, 3.0])}
    messages = list(strategy.configure_train(1, strategy.global_arrays, ConfigRecord(), grid))
    sent = {strategy.directory.client_of(m.metadata.dst_node_id).client_id:
            from_array_record(m.content["arrays"]) for m in messages}
    assert not np.allclose(sent["c0"]["body"], sent["c1"]["body"])
    np.testing.assert_allclose(sent["c0"]["body"],
                               sum(softmax(strategy.w["c0"])[j] * thetas[j]["body"] for j in range(3)),
                               rtol=1e-6)
    # the transport renames every node (SuperNodes restarted): rows follow the client id
    renamed = LocalGrid.simulation(describe_only, 2, first_node_id=90_000)
    strategy.directory = ClientDirectory(RunConfig().to_mapping(), timeout=10)
    messages = list(strategy.configure_evaluate(2, strategy.global_arrays, ConfigRecord(), renamed))
    again = {strategy.directory.client_of(m.metadata.dst_node_id).client_id:
             from_array_record(m.content["arrays"]) for m in messages}
    np.testing.assert_array_equal(again["c0"]["body"], sent["c0"]["body"])
    np.testing.assert_array_equal(again["c1"]["body"], sent["c1"]["body"])


def test_a_new_client_starts_with_a_uniform_merge():
    grid = LocalGrid.simulation(describe_only, 2)
    strategy = fedmerge(grid, random_models(4))
    np.testing.assert_array_equal(strategy.weights_of("newcomer"), np.full(4, 0.25))


def test_state_round_trip():
    grid = LocalGrid.simulation(describe_only, 2)
    strategy = fedmerge(grid, random_models(3))
    strategy.w = {"c0": np.array([1.0, 2.0, 3.0]), "c1": np.array([-1.0, 0.0, 1.0])}
    fresh = fedmerge(grid, random_models(3, seed=9))
    fresh.load_state_dict(strategy.state_dict())
    assert set(fresh.w) == {"c0", "c1"}
    np.testing.assert_array_equal(fresh.w["c1"], strategy.w["c1"])
    for a, b in zip(fresh.thetas, strategy.thetas):
        np.testing.assert_array_equal(a["body"], b["body"])


def test_a_misshapen_reply_is_rejected_and_the_round_goes_on():
    grid = LocalGrid.simulation(describe_only, 3)
    strategy = fedmerge(grid, random_models(2))
    messages = list(strategy.configure_train(1, strategy.global_arrays, ConfigRecord(), grid))
    replies = [answer(m, from_array_record(m.content["arrays"]), 10) for m in messages]
    replies[1] = answer(messages[1], {"classifier.weight": np.zeros((5, 5), np.float32),
                                      "body": np.zeros(3, np.float32)}, 10)
    arrays, _ = strategy.aggregate_train(1, replies)
    assert arrays is not None
    assert list(strategy.rejected) == [messages[1].metadata.dst_node_id]
    assert "has shape (5, 5)" in next(iter(strategy.rejected.values()))


def test_independent_initialisation_keeps_the_backbone_and_lora_b_zero():
    model = build_model(RunConfig(model="tiny-bert"), 4)
    frozen = {k: v.clone() for k, v in model.state_dict().items() if "lora" not in k
              and "modules_to_save" not in k}
    a, b = reinitialise_travelling(model, 1), reinitialise_travelling(model, 2)
    assert reinitialise_travelling(model, 1).keys() == a.keys()
    for name in a:
        if "lora_B" in name:
            assert not a[name].any() and not b[name].any()
        else:
            assert not np.array_equal(a[name], b[name]), name
    for k, v in model.state_dict().items():
        if k in frozen:
            assert (v == frozen[k]).all(), k
    np.testing.assert_array_equal(reinitialise_travelling(model, 1)["base_model.model.classifier.weight"],
                                  a["base_model.model.classifier.weight"])


def test_num_global_models_below_one_is_named():
    with pytest.raises(ConfigError, match="fedmerge.num-global-models must be >= 1"):
        run_config({"strategy": "fedmerge", "fedmerge.num-global-models": 0})


@pytest.mark.slow  # trains for more than 10 s
def test_two_rounds_end_to_end_with_lora(tmp_path, topics_csv):
    from peft import PeftModel
    from safetensors.numpy import load_file

    from pollen.models import build_backbone

    config = RunConfig(strategy="fedmerge", dataset=str(topics_csv), model="tiny-bert",
                       lr=0.05, local_epochs=4, max_seq_len=16, partitioner="iid",
                       num_server_rounds=2, output_dir=str(tmp_path), run_name="fm")
    outputs = run(LocalGrid.simulation(client_app, 4), config)
    rows = outputs.read_metrics()
    assert [r["round"] for r in rows] == [1, 2]
    merges = outputs.read_jsonl("merge_weights.jsonl")
    assert [m["round"] for m in merges] == [1, 2] and set(merges[-1]["weights"]) == {"0", "1", "2", "3"}
    run_dir = outputs.run_dir
    for folder in ["adapters/uniform", "adapters/global-0", "adapters/global-2",
                   *[f"adapters/clients/{c}" for c in "0123"]]:
        assert (run_dir / folder / "adapter_model.safetensors").is_file(), folder
    # A client's saved adapter is its merge sum_j softmax(W_i)_j Theta_j of the saved
    # global models, with the logged weights, and peft loads it onto the base.
    thetas = [load_file(run_dir / f"adapters/global-{j}/adapter_model.safetensors")
              for j in range(3)]
    weights = merges[-1]["weights"]["2"]
    client = load_file(run_dir / "adapters/clients/2/adapter_model.safetensors")
    assert client.keys() == thetas[0].keys()
    for name, value in client.items():
        np.testing.assert_allclose(value, sum(w * t[name] for w, t in zip(weights, thetas)),
                                   rtol=1e-4, atol=1e-5)
    assert not all(np.allclose(w, 1 / 3) for w in weights)  # W moved away from uniform
    loaded = PeftModel.from_pretrained(build_backbone("tiny-bert", 4, config.seed),
                                       run_dir / "adapters/clients/2")
    loaded_state = {k: v for k, v in loaded.state_dict().items() if "lora_A" in k}
    assert loaded_state and all(
        np.array_equal(v.numpy(), client[k.replace(".default", "")])
        for k, v in loaded_state.items())
