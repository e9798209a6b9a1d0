"""The README's default job, for real: `flwr run . --stream` on a fresh FLWR_HOME."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.processes import processes_mentioning, stop

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # starts a SuperLink and Ray through `flwr run`


def test_flwr_run_streams_the_default_job(tmp_path):
    flwr_home, outputs = tmp_path / "flwr-home", tmp_path / "runs"
    env = {**os.environ, "FLWR_HOME": str(flwr_home),
           "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"}
    flwr = str(Path(sys.executable).with_name("flwr"))
    try:
        done = subprocess.run(
            [flwr, "run", ".", "--stream", "--federation-config", "num-supernodes=10",
             "--run-config",
             f"num-server-rounds=2 output-dir='{outputs}' run-name='default'"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        log = done.stdout + done.stderr
        assert done.returncode == 0, log[-3000:]
    finally:
        stop(processes_mentioning(str(flwr_home)))
    assert "[round 2/2] global accuracy" in log
    assert "[rounds 2/2] round 2 of 2 | elapsed" in log and "ETA 0m00s" in log  # progress
    rows = [json.loads(line) for line in (outputs / "default" / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2]
    assert rows[-1]["num_replies"] == 10  # the 10 virtual clients of the default federation
    assert (outputs / "default" / "model" / "model.safetensors").is_file()


def test_flwr_run_federates_an_encoder_and_a_decoder(tmp_path):
    """#34: `model-families='minilm,smollm2'` under HeteroTune through `flwr run`, 2 rounds
    on 400 rows of AG News (2 SuperNodes: one MiniLM client, one SmolLM2 client)."""
    ag_news = ROOT.parent / "shared" / "data" / "ag_news" / "test.csv"
    if not ag_news.is_file():
        pytest.skip(f"{ag_news} is not present")
    rows_kept = tmp_path / "ag_news_400.csv"  # every class; a small server test split
    rows_kept.write_text("".join(ag_news.read_text().splitlines(keepends=True)[:400]))
    flwr_home, outputs = tmp_path / "flwr-home", tmp_path / "runs"
    env = {**os.environ, "FLWR_HOME": str(flwr_home),
           "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"}
    flwr = str(Path(sys.executable).with_name("flwr"))
    keys = (f"strategy='heterotune' model='minilm' model-families='minilm,smollm2' "
            f"dataset='{rows_kept}' partitioner='iid' num-server-rounds=2 max-steps=2 "
            f"batch-size=4 max-seq-len=16 server-test-fraction=0.1 fraction-evaluate=0.0 "
            f"output-dir='{outputs}' run-name='across'")
    try:
        done = subprocess.run(
            [flwr, "run", ".", "--stream", "--federation-config", "num-supernodes=2",
             "--run-config", keys],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
        log = done.stdout + done.stderr
        assert done.returncode == 0, log[-3000:]
    finally:
        stop(processes_mentioning(str(flwr_home)))
    rows = [json.loads(line) for line in
            (outputs / "across" / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2]
    assert rows[-1]["num_replies"] == 2 and rows[-1]["failures"] == []
    assert set(rows[-1]["family_accuracy"]) == {"minilm", "smollm2"}
    assert "minilm|smollm2" in rows[-1]["cmga_cosines"]  # the shared q/v experts
    assert sorted(p.name for p in (outputs / "across" / "adapters").iterdir()) == [
        "minilm", "smollm2"]
