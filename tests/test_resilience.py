"""Nothing lost: checkpoints, kill-and-resume, validated replies, failing clients."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from safetensors.numpy import load_file

from client_app.app import app as client_app
from pollen.config import ConfigError, RunConfig
from pollen.data import load_task
from pollen.records import to_array_record
from server_app.app import run
from server_app.checkpoints import latest_checkpoint
from server_app.rounds import reproducible
from strategies import run_config
from tests.faults import FAULTS, SLOW_SECONDS, grid_with_fault
from tests.localgrid import LocalGrid

ROOT = Path(__file__).resolve().parents[1]


def _serve(config: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tests.serve_local", json.dumps(config)],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)


def _rows(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [reproducible(r) for r in rows]


@pytest.mark.slow
# The method with the most state besides the global model (per-client merge weights and
# global models); guided's atlas, FedRef's window and an LLM run are resumed bit for bit
# in process by test_a_run_extended_on_resume_equals_an_uninterrupted_one.
@pytest.mark.parametrize("strategy", ["fedmerge"])
def test_a_run_killed_with_sigkill_resumes_to_identical_results(tmp_path, strategy):
    common = {"strategy": strategy, "num-server-rounds": 8, "output-dir": str(tmp_path),
              "fraction-train": 0.75}
    if strategy == "guided":  # partial participation: the atlas holds stale updates
        common["server-data-fraction"] = 0.05
    straight = _serve({**common, "run-name": "straight"})
    assert straight.wait(timeout=300) == 0, straight.stderr.read()[-2000:]

    killed_dir = tmp_path / "killed"
    victim = _serve({**common, "run-name": "killed"})
    try:
        deadline = time.time() + 300
        while not (killed_dir / "checkpoints" / "round-2").is_dir():
            assert victim.poll() is None and time.time() < deadline, "no checkpoint appeared"
            time.sleep(0.01)
        os.kill(victim.pid, signal.SIGKILL)
    finally:
        victim.wait(timeout=60)
    assert victim.returncode == -signal.SIGKILL
    assert not (killed_dir / "summary.json").exists(), "the run finished before the kill"
    interrupted_at = latest_checkpoint(killed_dir).server_round
    assert interrupted_at < 8

    resumed = _serve({"resume": str(killed_dir)})
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read()[-2000:]
    assert _rows(killed_dir) == _rows(tmp_path / "straight")
    a = load_file(tmp_path / "straight" / "model" / "model.safetensors")
    b = load_file(killed_dir / "model" / "model.safetensors")
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    if strategy == "fedmerge":
        merges = (killed_dir / "merge_weights.jsonl").read_text()
        assert merges == (tmp_path / "straight" / "merge_weights.jsonl").read_text()


def test_only_the_last_checkpoints_are_kept_and_damaged_ones_are_skipped(tmp_path):
    config = RunConfig(num_server_rounds=5, keep_checkpoints=2, output_dir=str(tmp_path),
                       run_name="r")
    outputs = run(LocalGrid.simulation(client_app, 3), config)
    root = outputs.run_dir / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["round-4", "round-5"]
    (root / ".round-6.partial").mkdir()  # a write that never finished
    (root / ".round-6.partial" / "state.json").write_text("{")
    tensors = root / "round-5" / "strategy.safetensors"
    tensors.write_bytes(tensors.read_bytes()[:-8] + b"garbage!")  # damaged after the fact
    assert latest_checkpoint(outputs.run_dir).server_round == 4


def test_resume_without_a_checkpoint_is_an_error(tmp_path):
    (tmp_path / "config.json").write_text(RunConfig().to_json())
    with pytest.raises(ConfigError, match="holds no complete checkpoint"):
        run(LocalGrid.simulation(client_app, 2), RunConfig(resume=str(tmp_path)))
    with pytest.raises(ConfigError, match="not a Pollen run folder"):
        run(LocalGrid.simulation(client_app, 2), RunConfig(resume=str(tmp_path / "nowhere")))


EXTENDED_RUNS = {
    "fedref": {"strategy": "fedref", "fedref.p": 2},  # warm-up before, its window after
    "guided": {"strategy": "guided", "server-data-fraction": 0.1},  # its atlas
    "llm": {"task": "instruct", "model": "tiny-llama", "max-seq-len": 96, "max-steps": 2,
            "partitioner": "iid", "server-test-fraction": 0.05, "local-test-fraction": 0.05,
            "fraction-evaluate": 0.5},
}


@pytest.mark.slow  # eight rounds in all
@pytest.mark.parametrize("case", list(EXTENDED_RUNS))
def test_a_run_extended_on_resume_equals_an_uninterrupted_one(tmp_path, topics_csv, case):
    """2 rounds, then resume with num-server-rounds = 4: the same rows and the same
    final state as 4 rounds in one go (the issue's 2 + 2 = 4); for an LLM run too."""
    common = {**EXTENDED_RUNS[case], "fraction-train": 0.5, "output-dir": str(tmp_path)}
    clients = 4
    if case == "llm":
        common["dataset"], clients = str(topics_csv), 2
    whole = run(LocalGrid.simulation(client_app, clients),
                run_config({**common, "num-server-rounds": 4, "run-name": "whole"}))
    short = run(LocalGrid.simulation(client_app, clients),
                run_config({**common, "num-server-rounds": 2, "run-name": "parts"}))
    extended = run(LocalGrid.simulation(client_app, clients),
                   run_config({"num-server-rounds": 4, "resume": str(short.run_dir)}))
    assert extended.run_dir == short.run_dir

    def rows(outputs):
        return [reproducible(r) for r in outputs.read_metrics()]

    assert [r["round"] for r in rows(extended)] == [1, 2, 3, 4]
    assert rows(extended) == rows(whole)
    a = latest_checkpoint(whole.run_dir).strategy_state["tensors"]
    b = latest_checkpoint(extended.run_dir).strategy_state["tensors"]
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert json.loads((extended.run_dir / "config.json").read_text())["num-server-rounds"] == 4


def test_resuming_with_a_changed_key_names_each_one(tmp_path):
    done = run(LocalGrid.simulation(client_app, 3),
               run_config({"num-server-rounds": 2, "output-dir": str(tmp_path),
                           "run-name": "r", "seed": 7}))
    resume = {"resume": str(done.run_dir)}
    with pytest.raises(ConfigError, match=r"local-epochs \(run: 2, asked: 3\); seed "
                                          r"\(run: 7, asked: 8\); only num-server-rounds"):
        run(LocalGrid.simulation(client_app, 3),
            run_config({**resume, "seed": 8, "local-epochs": 3}))
    with pytest.raises(ConfigError, match="has 2 rounds already, more than num-server-rounds"):
        run(LocalGrid.simulation(client_app, 3), run_config({**resume, "num-server-rounds": 1}))
    cosine = run(LocalGrid.simulation(client_app, 3),
                 run_config({"num-server-rounds": 1, "output-dir": str(tmp_path),
                             "run-name": "c", "lr-schedule": "cosine", "lr-min": 0.001}))
    with pytest.raises(ConfigError, match="lr-schedule 'cosine' spans its 1 rounds"):
        run(LocalGrid.simulation(client_app, 3),
            run_config({"resume": str(cosine.run_dir), "num-server-rounds": 2}))


@pytest.mark.parametrize("fault", FAULTS)
def test_a_failing_client_never_stops_the_run(tmp_path, fault):
    load_task(RunConfig())  # warm the data cache, so only the injected delay is slow
    config = RunConfig(num_server_rounds=2, output_dir=str(tmp_path), run_name=fault,
                       round_timeout=SLOW_SECONDS * 0.6, local_epochs=1)
    outputs = run(grid_with_fault(4, fault, reply_timeout=config.round_timeout), config)
    rows = outputs.read_metrics()
    assert [r["round"] for r in rows] == [1, 2]
    for row in rows:
        assert row["num_replies"] == 3 and row["eval_accuracy"] > 0.1
        if fault != "vanish" or row["round"] == 1:
            assert row["num_failures"] >= 1
    if fault in ("nan", "shape"):
        reason = "non-finite" if fault == "nan" else "has shape (1,)"
        assert all(len(r["rejections"]) == 1 and reason in r["rejections"][0] for r in rows)
    expected = {"raise": "train: client 0 failed: RuntimeError: injected failure",
                "slow": "train: client 0 sent no reply within 1.8s",
                "vanish": "train: client 0 sent no reply within 1.8s"}
    if fault in expected:
        assert rows[0]["failures"] == [expected[fault]]
    if fault == "vanish":  # gone for good: no more messages go to it
        assert rows[1]["num_failures"] == 0 and rows[1]["num_replies"] == 3


def test_too_few_valid_replies_keep_the_previous_global(tmp_path):
    config = RunConfig(num_server_rounds=1, min_replies=4, output_dir=str(tmp_path), run_name="m")
    outputs = run(grid_with_fault(4, "nan"), config)
    row = outputs.read_metrics()[0]
    assert row["kept_previous_global"] is True and row["num_replies"] == 3
    initial = load_file(outputs.run_dir / "checkpoints" / "round-1" / "strategy.safetensors")
    from pollen.adapters import travelling_state
    from pollen.models import build_model
    start = travelling_state(build_model(config, 10))
    assert all(np.array_equal(initial[f"global/{k}"], v) for k, v in start.items())


def test_update_norm_limit_rejects_or_clips(tmp_path):
    rejected = run(LocalGrid.simulation(client_app, 3), RunConfig(
        num_server_rounds=1, update_norm_limit=1e-4, output_dir=str(tmp_path), run_name="a"))
    row = rejected.read_metrics()[0]
    assert row["num_replies"] == 0 and row["kept_previous_global"] is True
    assert all("exceeds update-norm-limit" in r for r in row["rejections"])
    clipped = run(LocalGrid.simulation(client_app, 3), RunConfig(
        num_server_rounds=1, update_norm_limit=1e-4, update_norm_action="clip",
        output_dir=str(tmp_path), run_name="b"))
    row = clipped.read_metrics()[0]
    assert row["num_replies"] == 3 and not row["rejections"]
    state = load_file(clipped.run_dir / "checkpoints" / "round-1" / "strategy.safetensors")
    from pollen.adapters import travelling_state
    from pollen.models import build_model
    start = travelling_state(build_model(RunConfig(), 10))
    moved = np.sqrt(sum(((state[f"global/{k}"].astype(np.float64) - v) ** 2).sum()
                        for k, v in start.items()))
    assert 0 < moved <= 1e-4 * (1 + 1e-3)


def test_a_malformed_message_gets_an_error_reply_naming_the_problem():
    grid = LocalGrid.simulation(client_app, 2)
    node = next(iter(grid.get_node_ids()))
    config = ConfigRecord({**RunConfig().to_mapping(), "server-round": 1})
    bad = to_array_record({"classifier.weight": np.zeros((10, 64), np.float32)})
    reply = grid.send_and_receive([Message(RecordDict({"arrays": bad, "config": config}),
                                           dst_node_id=node, message_type=MessageType.TRAIN)])[0]
    assert reply.has_error()
    assert "missing" in reply.error.reason and "features.0.weight" in reply.error.reason


def test_fraction_evaluate_zero_sends_no_evaluate_message(tmp_path):
    """Flower's meaning of 0: the clients only train; the server still evaluates."""
    grid = LocalGrid.simulation(client_app, 3)
    outputs = run(grid, run_config({"num-server-rounds": 2, "fraction-evaluate": 0.0,
                                    "output-dir": str(tmp_path)}))
    sent = {m.metadata.message_type for m in grid.sent}
    assert "train" in sent and "evaluate" not in sent
    rows = outputs.read_metrics()
    assert all(r["client_accuracy"] is None and r["eval_accuracy"] > 0.1 for r in rows)
    with pytest.raises(ConfigError, match=r"fraction-evaluate must be in \[0, 1\]"):
        run_config({"fraction-evaluate": -0.1})
