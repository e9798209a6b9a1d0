"""A Flower user's own app with a Pollen strategy (#35): the README's server code, run
with Flower's quickstart-pytorch ClientApp (``tests/quickstart``), for each strategy line
the README gives. Every round trains (its train metrics are aggregated) and the final
model beats the initial one on the app's own ``evaluate_fn``."""

import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.serverapp import ServerApp
from flwr.simulation import run_simulation

from strategies import FedAvg, FedProx, ProximalTerm
from tests.localgrid import LocalGrid
from tests.quickstart.client_app import app as quickstart_client
from tests.quickstart.client_app import proximal_app as proximal_client
from tests.quickstart.task import Net

README = Path(__file__).resolve().parents[1] / "README.md"
RUN_CONFIG = {"fraction-train": 0.5, "num-server-rounds": 3, "lr": 0.01}


def readme_code() -> tuple[str, dict[str, str]]:
    """The section's server code (with the example's package named as here) and its
    strategy lines by class name."""
    section = README.read_text().split("## Use a Pollen strategy in your own Flower app")[1]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    code = blocks[0].replace("pytorchexample.task", "tests.quickstart.task")
    lines = {re.match(r"strategy = (\w+)\(", line).group(1): line
             for line in blocks[1].strip().splitlines()}
    return code, lines


CODE, STRATEGY_LINES = readme_code()


def server_main(strategy_line: str):
    """The README's ``main`` with its strategy line replaced by ``strategy_line``."""
    default = STRATEGY_LINES["FedAvg"]
    assert default in CODE
    namespace: dict = {}
    exec(compile(CODE.replace(default, strategy_line), str(README), "exec"), namespace)
    return namespace["main"]


def run_main(main, grid) -> Context:
    context = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(),
                      run_config=dict(RUN_CONFIG))
    main(grid, context)
    return context


def test_the_readme_names_every_strategy_a_plain_client_can_run():
    assert set(STRATEGY_LINES) == {"FedAvg", "FedProx", "FedRef", "FedMerge", "GuidedMerge",
                                   "Central"}


@pytest.mark.parametrize("name", sorted(STRATEGY_LINES))
def test_each_strategy_trains_a_quickstart_app_every_round(name, monkeypatch):
    results = []
    main = server_main(STRATEGY_LINES[name])
    original_start = main.__globals__[name].start

    def recording_start(self, *args, **kwargs):
        result = original_start(self, *args, **kwargs)
        results.append(result)
        return result

    monkeypatch.setattr(main.__globals__[name], "start", recording_start)
    grid = LocalGrid.simulation(quickstart_client, 4)
    run_main(main, grid)
    (result,) = results
    rounds = range(1, RUN_CONFIG["num-server-rounds"] + 1)
    if name == "Central":  # the server trains; clients only evaluate
        assert not any(m.metadata.message_type == "train" for m in grid.sent)
    else:
        assert sorted(result.train_metrics_clientapp) == list(rounds)
        assert all("train_loss" in result.train_metrics_clientapp[r] for r in rounds)
    assert sorted(result.evaluate_metrics_clientapp) == list(rounds)
    server = result.evaluate_metrics_serverapp
    assert server[3]["accuracy"] > server[0]["accuracy"] + 0.2, server
    if name == "FedMerge":
        assert result.evaluate_metrics_clientapp[3]["personalized_accuracy"] == (
            result.evaluate_metrics_clientapp[3]["eval_acc"])


def test_a_missing_server_piece_is_named_at_construction():
    for line, needs in [("GuidedMerge(fraction_train=0.5)", "search_data="),
                        ("Central(fraction_train=0.5, model=Net())", "server_data=")]:
        namespace: dict = {}
        exec(CODE, namespace)
        with pytest.raises(ValueError, match=needs):
            eval(line, namespace)


@pytest.mark.parametrize("name", ["FamilyFedAvg", "HetLoRA", "HeteroTune", "Mosaic"])
def test_methods_that_need_pollen_s_client_say_so_at_construction(name):
    import strategies.fedavg_per_family.strategy as per_family
    import strategies.heterotune.strategy as heterotune
    import strategies.hetlora.strategy as hetlora
    import strategies.mosaic.strategy as mosaic

    modules = {"FamilyFedAvg": per_family, "HetLoRA": hetlora, "HeteroTune": heterotune,
               "Mosaic": mosaic}
    with pytest.raises(ValueError, match="Pollen's client app"):
        getattr(modules[name], name)(fraction_train=0.5)


def broken_client(kind: str):
    """The quickstart's client, except on node ``BROKEN``, whose train reply is broken."""
    def app(message: Message, context: Context) -> Message:
        reply = quickstart_client(message, context)
        if message.metadata.message_type != "train" or message.metadata.dst_node_id != BROKEN:
            return reply
        arrays = reply.content["arrays"]
        state = {k: v.numpy() for k, v in arrays.to_torch_state_dict().items()}
        if kind == "nan":
            state["fc2.bias"][0] = np.nan
        elif kind == "shape":
            state["fc2.bias"] = np.zeros(3, np.float32)
        metrics = reply.content["metrics"]
        if kind == "metrics":
            metrics = MetricRecord({"train_loss": 0.1})
        return Message(RecordDict({"arrays": ArrayRecord({k: torch.from_numpy(v)
                                                          for k, v in state.items()}),
                                   "metrics": metrics}), reply_to=message)
    return app


BROKEN = 1000  # LocalGrid.simulation's first node


@pytest.mark.parametrize("kind,reason", [("nan", "non-finite"), ("shape", "fc2.bias"),
                                         ("metrics", "num-examples")])
def test_a_broken_reply_is_logged_counted_and_the_run_goes_on(kind, reason, flwr_warnings):
    grid = LocalGrid.simulation(broken_client(kind), 3)
    strategy = FedAvg(min_available_nodes=3)
    result = strategy.start(grid, ArrayRecord(Net().state_dict()), num_rounds=2,
                            train_config=ConfigRecord({"lr": 0.01}))
    warnings = flwr_warnings
    named = [w for w in warnings if f"node {BROKEN}" in w and reason in w]
    assert len(named) == 2, warnings  # once a round
    for server_round in (1, 2):
        metrics = result.train_metrics_clientapp[server_round]
        assert metrics["num-rejected"] == 1
        assert math.isfinite(metrics["train_loss"])
    assert all(np.isfinite(v).all() for v in
               (a.numpy() for a in result.arrays.values()))


def test_a_round_whose_every_reply_is_dropped_keeps_the_model(flwr_warnings):
    def all_nan(message: Message, context: Context) -> Message:
        reply = quickstart_client(message, context)
        if message.metadata.message_type == "train":
            state = {k: torch.full(v.shape, float("nan"))
                     for k, v in reply.content["arrays"].to_torch_state_dict().items()}
            reply.content["arrays"] = ArrayRecord(state)
        return reply

    initial = ArrayRecord(Net().state_dict())
    strategy = FedAvg(min_available_nodes=2)
    grid = LocalGrid.simulation(all_nan, 2)
    result = strategy.start(grid, initial, num_rounds=1, train_config=ConfigRecord({"lr": 0.01}))
    assert result.train_metrics_clientapp[1]["num-rejected"] == 2
    evaluated = [m.content["arrays"] for m in grid.sent if m.metadata.message_type == "evaluate"]
    assert len(evaluated) == 2 and all(  # the clients evaluate the model they were sent
        np.array_equal(record[k].numpy(), initial[k].numpy())
        for record in evaluated for k in initial)
    assert any("keeping the previous global model" in line for line in flwr_warnings)


@pytest.mark.slow
def test_the_readme_app_runs_in_flower_s_simulation_engine():
    """The README's app with FedMerge in ``run_simulation`` (Ray): 4 SuperNodes running
    the quickstart ClientApp."""
    main = server_main(STRATEGY_LINES["FedMerge"])
    finals = []
    server_app = ServerApp()

    @server_app.main()
    def wrapped(grid, context):
        context.run_config.update(RUN_CONFIG)
        main(grid, context)
        finals.append(context.state["final"])

    run_simulation(server_app=server_app, client_app=quickstart_client, num_supernodes=4,
                   backend_config={"client_resources": {"num_cpus": 1}})
    (final,) = finals
    assert set(final) == set(Net().state_dict())


def evaluate_replies(metrics_by_node: dict[int, dict]) -> list[Message]:
    """Hand-made evaluate replies from the given nodes, carrying the given metrics."""
    LocalGrid({}, {})  # stamps messages with a task identity
    replies = []
    for node, metrics in metrics_by_node.items():
        sent = Message(RecordDict({"config": ConfigRecord()}), message_type="evaluate",
                       dst_node_id=node)
        sent.metadata.__dict__["_message_id"] = f"m{node}"
        reply = Message(RecordDict({"metrics": MetricRecord(metrics)}), reply_to=sent)
        reply.metadata.__dict__["_src_node_id"] = node
        replies.append(reply)
    return replies


def test_metrics_are_weighted_over_the_replies_that_report_them(flwr_warnings):
    """Node 1 reports accuracy and a loss, node 2 only a loss, node 3 no example count:
    the accuracy is node 1's own, the loss the weighted mean of both, node 3 left out
    with a warning (Flower's FedAvg would dilute the accuracy, or stop on the keys)."""
    replies = evaluate_replies({1: {"num-examples": 30, "eval_acc": 0.9, "eval_loss": 1.0},
                                2: {"num-examples": 10, "eval_loss": 2.0},
                                3: {"eval_loss": 5.0}})
    metrics = FedAvg().aggregate_evaluate(1, replies)
    assert metrics["eval_acc"] == 0.9
    assert metrics["eval_loss"] == 30 / 40 * 1.0 + 10 / 40 * 2.0
    assert [line for line in flwr_warnings if "evaluate reply of node 3" in line
            and "num-examples" in line]


def _state_distance(a: dict, b: dict) -> float:
    return float(sum(((a[k] - b[k]) ** 2).sum() for k in a))


@pytest.mark.parametrize("name,mu,anchor_key", [("FedProx", 0.01, "arrays"),
                                                ("FedRef", 0.01, "reference"),
                                                ("FedMerge", 2 * 0.01, "arrays")])
def test_the_proximal_term_helper_is_what_each_strategy_asks_for(name, mu, anchor_key):
    """The README app with the quickstart client that adds ``ProximalTerm``: in the last
    round's train message the term is (mu/2) ||w - a||^2 with each method's mu (FedMerge
    sends 2 mu) and anchor (FedRef's reference once its warm-up of p = 2 rounds is over,
    else the sent arrays), at a model moved away from the anchor by hand."""
    main = server_main(STRATEGY_LINES[name])
    grid = LocalGrid.simulation(proximal_client, 4)
    run_main(main, grid)
    last = [m for m in grid.sent if m.metadata.message_type == "train"][-1]
    assert last.content["config"]["proximal-mu"] == pytest.approx(mu)
    anchor = {k: v.float() for k, v in last.content[anchor_key].to_torch_state_dict().items()}
    if name == "FedRef":
        assert anchor_key in last.content.array_records and not torch.equal(
            anchor["fc2.bias"], last.content["arrays"].to_torch_state_dict()["fc2.bias"])
    model = Net()
    moved = {k: v + 0.1 * torch.arange(v.numel()).reshape(v.shape) / v.numel()
             for k, v in anchor.items()}
    model.load_state_dict(moved)
    term = ProximalTerm.from_message(last)(model)
    assert term.item() == pytest.approx(mu / 2 * _state_distance(moved, anchor), rel=1e-5)
    term.backward()  # the gradient is mu (w - a)
    torch.testing.assert_close(model.fc2.bias.grad, mu * (moved["fc2.bias"] - anchor["fc2.bias"]))


def test_the_proximal_term_holds_the_clients_near_the_global():
    """FedProx at mu = 10 with the helper: round 1's global moves less than half as far as
    with the plain quickstart client (mu changes nothing without the helper)."""
    initial = ArrayRecord(Net().state_dict())
    moved = []
    for client in (quickstart_client, proximal_client):
        strategy = FedProx(min_available_nodes=2, proximal_mu=10.0)
        result = strategy.start(LocalGrid.simulation(client, 2), initial, num_rounds=1,
                                train_config=ConfigRecord({"lr": 0.01}))
        moved.append(_state_distance(result.arrays.to_torch_state_dict(),
                                     initial.to_torch_state_dict()))
    assert moved[1] < 0.5 * moved[0], moved


def test_no_proximal_mu_means_no_term():
    model = Net()
    message = Message(RecordDict({"arrays": ArrayRecord(model.state_dict()),
                                  "config": ConfigRecord({"lr": 0.01})}),
                      message_type="train", dst_node_id=1)
    assert ProximalTerm.from_message(message)(model).item() == 0.0
