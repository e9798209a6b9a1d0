"""Whole runs: Flower's own simulation engine, and the in-process grid for quick checks."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.simulation import run_simulation

from client_app.app import app as client_app
from pollen.adapters import travelling_state
from pollen.config import ConfigError, RunConfig
from pollen.models import build_model
from server_app.app import build_server_app, run
from server_app.rounds import reproducible
from strategies import run_config
from strategies.fedprox.config import FedProxConfig
from tests.localgrid import LocalGrid

ROW_KEYS = {"round", "strategy", "num_replies", "num_failures", "train_loss", "eval_loss",
            "eval_accuracy", "client_accuracy", "bytes_up", "bytes_down", "round_seconds"}
TINY_TEXT = {"model": "tiny-bert", "lr": 0.05, "local-epochs": 6, "max-seq-len": 16,
             "partitioner": "iid"}


def simulate(overrides: dict, num_clients: int) -> list[dict]:
    run_simulation(server_app=build_server_app(overrides), client_app=client_app,
                   num_supernodes=num_clients,
                   backend_config={"client_resources": {"num_cpus": 1}})
    run_dir = Path(overrides["output-dir"]) / overrides["run-name"]
    return run_dir, [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_digits_cnn_two_rounds_in_flower_simulation(tmp_path):
    run_dir, rows = simulate({"output-dir": str(tmp_path), "run-name": "digits",
                              "num-server-rounds": 2}, num_clients=10)
    assert [r["round"] for r in rows] == [1, 2]
    assert all(ROW_KEYS <= set(r) for r in rows)
    assert rows[-1]["eval_accuracy"] > 0.3  # chance is 0.1
    assert rows[-1]["num_replies"] == 10 and rows[-1]["num_failures"] == 0
    # every client downloads the model twice (train, evaluate) and uploads it once
    assert rows[0]["bytes_down"] == 2 * rows[0]["bytes_up"]
    assert rows[0]["bytes_up"] > 10 * 38_282 * 4
    for name in ("config.json", "summary.json", "plot.png", "model/model.safetensors"):
        assert (run_dir / name).is_file(), name
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["final_eval_accuracy"] == rows[-1]["eval_accuracy"]


@pytest.mark.slow
def test_tiny_bert_lora_two_rounds_and_the_saved_adapter_reproduces_it(tmp_path, topics_csv):
    from peft import PeftModel

    from pollen.data import load_task
    from pollen.device import resolve_device
    from pollen.models import build_backbone
    from pollen.training import evaluate, make_loader, torch_dataset

    overrides = {"output-dir": str(tmp_path), "run-name": "tiny", "dataset": str(topics_csv),
                 "num-server-rounds": 2, **TINY_TEXT}
    run_dir, rows = simulate(overrides, num_clients=4)
    assert [r["round"] for r in rows] == [1, 2]
    assert rows[-1]["eval_accuracy"] > 0.4  # chance is 0.25
    config = run_config(overrides)
    task = load_task(config)
    base = build_backbone("tiny-bert", task.num_classes, config.seed)
    model = PeftModel.from_pretrained(base, run_dir / "model")
    test = torch_dataset(task.server_test, "text", "tiny-bert", config.max_seq_len)
    result = evaluate(model, make_loader(test, 32, False, 0), resolve_device("cpu"))
    assert result.accuracy == rows[-1]["eval_accuracy"]


def test_same_seed_same_metrics(tmp_path):
    rows = []
    for name in ("a", "b"):
        config = RunConfig(num_server_rounds=2, fraction_train=0.5, output_dir=str(tmp_path),
                           run_name=name)
        outputs = run(LocalGrid.simulation(client_app, 6), config)
        rows.append([reproducible(r) for r in outputs.read_metrics()])
        assert all(set(r["peak_memory_mb"]) == {"train", "aggregate", "evaluate",
                                                "server_eval"}
                   and min(r["peak_memory_mb"].values()) > 0 and r["aggregate_seconds"] > 0
                   for r in outputs.read_metrics())
        # One process served every message: none after its first paid a start-up.
        assert all(r["startup_seconds"] == r["import_seconds"] == 0.0
                   for r in outputs.read_metrics())
    assert rows[0] == rows[1]


def test_fedprox_keeps_the_global_model_closer_to_where_it_started(tmp_path):
    """A strong proximal term (mu = 100) holds every client near the model it was sent,
    so one round of FedProx moves the global model far less than one of FedAvg."""
    from safetensors.numpy import load_file

    moved = {}
    for name in ("fedavg", "fedprox"):
        config = RunConfig(strategy=name, method=FedProxConfig(mu=100.0), num_server_rounds=1,
                           output_dir=str(tmp_path), run_name=name)
        outputs = run(LocalGrid.simulation(client_app, 4), config)
        start = travelling_state(build_model(config, 10))
        final = load_file(outputs.run_dir / "model" / "model.safetensors")
        moved[name] = np.sqrt(sum(((final[k] - v) ** 2).sum() for k, v in start.items()))
    assert 0 < moved["fedprox"] < 0.5 * moved["fedavg"]


@pytest.mark.parametrize("overrides, error, message", [
    ({"strategy": "fedsgd"}, ConfigError, "unknown strategy 'fedsgd'"),
    ({"model": "tiny-bert"}, ConfigError, "model 'tiny-bert' takes text input"),
    ({"label-column": "topic"}, ConfigError, "label column 'topic' not found"),
])
def test_bad_input_fails_before_any_training(tmp_path, topics_csv, overrides, error, message):
    if "label-column" in overrides:
        overrides = {**overrides, "dataset": str(topics_csv), **TINY_TEXT}
    grid = LocalGrid.simulation(client_app, 3)
    with pytest.raises(error, match=message):
        run(grid, run_config({"output-dir": str(tmp_path), **overrides}))
    assert not any(m.metadata.message_type == "train" for m in grid.sent)
    assert not list(tmp_path.iterdir())


def test_fewer_examples_than_clients_fails_before_training(tmp_path):
    tiny = tmp_path / "tiny.csv"
    tiny.write_text("label,text\n" + "".join(f"{i % 2},word{i}\n" for i in range(12)))
    config = RunConfig(dataset=str(tiny), output_dir=str(tmp_path / "out"), **{
        k.replace("-", "_"): v for k, v in TINY_TEXT.items()})
    grid = LocalGrid.simulation(client_app, 8)
    with pytest.raises(ConfigError, match="9 examples for 8 clients"):
        run(grid, config)
    assert not any(m.metadata.message_type == "train" for m in grid.sent)


def test_device_cuda_without_cuda_is_named():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    from pollen.device import resolve_device

    with pytest.raises(ConfigError, match="device=cuda was requested"):
        resolve_device("cuda")


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="Linux's VmHWM")
def test_peak_memory_is_the_peak_since_its_reset():
    """A 400 MiB array raises the peak; after the reset the peak is the present resident
    set again, and a 100 MiB array raises it by about that much."""
    from pollen.device import peak_memory_mb, reset_peak_memory

    cpu = torch.device("cpu")
    large = np.ones(400 * 2**20 // 8)
    before = peak_memory_mb(cpu)
    del large
    reset_peak_memory(cpu)
    after_reset = peak_memory_mb(cpu)
    assert after_reset < before - 300
    small = np.ones(100 * 2**20 // 8)
    assert 90 < peak_memory_mb(cpu) - after_reset < 130
    del small
