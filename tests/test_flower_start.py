"""Pollen's strategies are Flower strategies: Flower's own ``Strategy.start()`` runs each
method with Pollen's client app, and ends with the same state, tensor for tensor, as
Pollen's round loop (the server app's ``run``) on the same seed."""

import numpy as np
import pytest
from flwr.serverapp.strategy import Strategy

from client_app.app import app as client_app
from server_app.app import prepare, run
from server_app.checkpoints import latest_checkpoint
from strategies import METHODS, run_config
from tests.localgrid import LocalGrid

pytestmark = pytest.mark.slow  # two short runs of every method

DIGITS = {"local-epochs": 1, "num-server-rounds": 2, "fraction-train": 0.75}
TEXT = {**DIGITS, "model": "tiny-bert", "max-seq-len": 16, "text-column": "text"}
FAMILIES = {**TEXT, "model-families": "tiny-bert,tiny-bert-w64"}
SETTINGS = {
    "fedavg": DIGITS,
    "fedprox": {**DIGITS, "fedprox.mu": 0.1},
    "fedref": {**DIGITS, "fedref.p": 2},
    "fedmerge": DIGITS,
    "guided": {**DIGITS, "server-data-fraction": 0.05},
    "central": {**DIGITS, "server-data-fraction": 0.05},
    "heterotune": FAMILIES,
    "fedavg-per-family": FAMILIES,
    "hetlora": {**TEXT, "model-families": "tiny-bert", "hetlora.ranks": "4"},
    "mosaic": {**DIGITS, "num-server-rounds": 3, "mosaic.warmup-rounds": 1,
               "mosaic.prototypes": 2, "mosaic.generator-steps": 5, "mosaic.meta-steps": 5,
               "mosaic.distill-steps": 3, "mosaic.samples-per-generator": 4},
}


def test_every_method_has_a_setting_here():
    assert set(SETTINGS) == set(METHODS)


@pytest.mark.parametrize("method", sorted(SETTINGS))
def test_flower_start_and_pollen_s_round_loop_end_in_the_same_state(method, tmp_path,
                                                                     topics_csv):
    overrides = dict(SETTINGS[method])
    if overrides.get("model") == "tiny-bert":
        overrides["dataset"] = str(topics_csv)
    config = run_config({"strategy": method, "output-dir": str(tmp_path), "run-name": "loop",
                         **overrides})

    grid = LocalGrid.simulation(client_app, 4)
    prepared = prepare(grid, config)
    assert isinstance(prepared.strategy, Strategy)
    result = prepared.strategy.start(grid, prepared.strategy.global_arrays,
                                     num_rounds=config.num_server_rounds, timeout=60)
    started = prepared.strategy.state_dict()["tensors"]
    trained = [m for m in grid.sent if m.metadata.message_type == "train"]
    assert bool(trained) == (method != "central")  # the server-only baseline trains alone

    outputs = run(LocalGrid.simulation(client_app, 4), config)
    looped = latest_checkpoint(outputs.run_dir).strategy_state["tensors"]
    assert started.keys() == looped.keys()
    different = [k for k in started if not np.array_equal(started[k], looped[k])]
    assert not different, different[:5]
    if result.arrays is not None:  # the arrays start() carries are the strategy's own
        assert set(result.arrays) == set(prepared.strategy.global_arrays)
