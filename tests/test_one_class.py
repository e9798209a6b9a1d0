"""A global model that predicts one class is said, never reported as a plain success
(#36): each round's row carries ``predicted_class_max_share``, a round at or above 95%
logs a WARNING naming the cause and the keys to change, and the summary repeats it."""

import json

import numpy as np
import pytest
import torch

from client_app.app import app as client_app
from pollen.metrics import predicted_class_max_share
from pollen.records import from_array_record, to_array_record
from server_app.app import run
from strategies import run_config
from tests.localgrid import LocalGrid

DIGITS = {"num-server-rounds": 1, "local-epochs": 1, "partitioner": "iid"}


def test_the_share_is_the_most_frequent_prediction_s():
    assert predicted_class_max_share([3, 3, 1, 3]) == 0.75
    assert predicted_class_max_share(torch.tensor([2, 2, 2])) == 1.0


def forcing_class(label: int):
    """Pollen's client, whose trained head then gives ``label`` a bias of 100."""
    def app(message, context):
        reply = client_app(message, context)
        if message.metadata.message_type == "train":
            tensors = from_array_record(reply.content["arrays"])
            tensors["classifier.bias"] = np.where(np.arange(10) == label, 100.0,
                                                  0.0).astype(np.float32)
            reply.content["arrays"] = to_array_record(tensors)
        return reply
    return app


@pytest.mark.parametrize("forced", [True, False])
def test_a_one_class_round_warns_and_a_balanced_one_does_not(forced, tmp_path, flwr_warnings):
    app = forcing_class(3) if forced else client_app
    outputs = run(LocalGrid.simulation(app, 2), run_config(
        {**DIGITS, "output-dir": str(tmp_path), "run-name": "run"}))
    (row,) = outputs.read_metrics()
    summary = json.loads((outputs.run_dir / "summary.json").read_text())
    said = [line for line in flwr_warnings if "predicts one class" in line]
    if forced:
        assert row["predicted_class_max_share"] == 1.0
        assert row["eval_accuracy"] == pytest.approx(0.1, abs=0.02)  # digits' class 3 share
        assert len(said) == 2 and "optimizer" in said[0] and "round 1: 100%" in said[0]
        assert "run finished" in said[1]
        assert summary["one_class_rounds"] == [1]
    else:
        assert row["predicted_class_max_share"] < 0.95
        assert not said and summary["one_class_rounds"] == []
