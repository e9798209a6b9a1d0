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
