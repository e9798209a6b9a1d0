"""Seconds per round of the same jobs in simulation, in a loopback deployment and in the
docker-compose topology, and where a deployed round's seconds go.

    python -m bench deployment [--quick]

Two jobs, 2 clients, 3 rounds each (--quick: 1 round, and no docker):
- digits: the CNN, 2 local epochs, the clients' partitions of sklearn's digits
  (node config partition-id/num-partitions when deployed);
- MiniLM + LoRA on AG News, 1 local epoch, 64 tokens: deployed, each node reads its own
  400-row file (node config data-path; deploy/smoke-data.py makes the files, as
  deploy/smoke.sh does) and the server tests on its default share (0.2) of its own
  400-row file, 80 rows; simulated, 80 of the server's rows and both nodes' rows pooled
  into one file, of which the server tests on 80 (server-test-fraction 1/11) and 2 IID
  partitions get 400 rows each: as many examples as deployed, not the same ones.
The loopback deployment is tests/test_deployment.py's (TLS, SuperNode authentication,
process isolation with separate SuperExecs as in the compose file). The docker row runs
deploy/smoke.sh (SMOKE_OUT), whose jobs are these, when a Docker engine answers.
Where the time goes comes from the clients' train replies (startup_seconds,
import_seconds, setup_seconds, train_seconds: client_app/app.py) and the server's
train_phase_seconds, evaluate_phase_seconds and server_eval_seconds.
Duration: 18 minutes measured here, the smoke test 11 of them (its images cached);
--quick (no docker) was not timed.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from bench.common import AG_NEWS, ROOT, pyplot, save_plot, simulate, write_report
from tests.deployment import loopback

ROUNDS = 3
DIGITS = {"dataset": "digits", "model": "cnn", "local-epochs": 2}
MINILM = {"model": "minilm", "local-epochs": 1, "max-seq-len": 64}
SERVER_TEST_ROWS = 80  # deployed: the default server-test-fraction (0.2) of 400 rows
PHASES = ("startup_seconds", "import_seconds", "setup_seconds", "client_train_seconds_max",
          "train_phase_seconds", "evaluate_phase_seconds", "server_eval_seconds",
          "round_seconds")


def _files(folder: Path) -> dict[str, Path]:
    subprocess.run(["python3", str(ROOT / "deploy" / "smoke-data.py"), str(AG_NEWS),
                    str(folder)], check=True)
    return {"server": folder / "server.csv", "alice": folder / "node-1" / "alice.csv",
            "bob": folder / "node-2" / "bob.csv"}


def _settings(job: dict) -> str:
    return " ".join(f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}" for k, v in job.items())


def _deployed(folder: Path, job: dict, node_configs: list[dict], name: str) -> list[dict]:
    with loopback(folder / name) as link:
        for i, node in enumerate(node_configs, start=1):
            link.start_client(i, {**node, "device": "cpu", "threads": "1"})
        done = link.submit(f"{_settings(job)} min-clients=2 "
                           f"output-dir='{folder / 'runs'}' run-name='{name}'")
        if done.returncode != 0:
            raise RuntimeError((done.stdout + done.stderr)[-3000:])
    return [json.loads(line) for line in
            (folder / "runs" / name / "metrics.jsonl").read_text().splitlines()]


def _docker(rounds: int) -> dict[str, list[dict]] | str:
    """The smoke test's clean runs, or why there are none."""
    if subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        return "no Docker engine here"
    out = Path(tempfile.mkdtemp(prefix="pollen-smoke-out-"))
    done = subprocess.run(["bash", str(ROOT / "deploy" / "smoke.sh")],
                          env={**os.environ, "SMOKE_OUT": str(out)}, capture_output=True,
                          text=True)
    print(done.stdout[-3000:])
    if done.returncode != 0:
        raise RuntimeError(f"deploy/smoke.sh failed:\n{done.stdout[-3000:]}{done.stderr[-2000:]}")
    runs = {job: [json.loads(line) for line in
                  (out / f"docker-{job}.jsonl").read_text().splitlines()]
            for job in ("digits", "agnews")}
    assert all(len(rows) == rounds for rows in runs.values())
    return runs


def _mean(rows: list[dict], key: str) -> float:
    values = [r.get(key) for r in rows]
    return float(np.mean(values)) if values and None not in values else float("nan")


def run(quick: bool, out_dir: Path) -> Path:
    rounds = 1 if quick else ROUNDS
    folder = Path(tempfile.mkdtemp(prefix="pollen-deploy-"))
    files = _files(folder / "data")
    rows = {name: path.read_text().splitlines(keepends=True)[1:] for name, path in files.items()}
    pooled = folder / "pooled.csv"  # for the simulation
    pooled.write_text("label,text\n" + "".join(rows["server"][:SERVER_TEST_ROWS]
                                               + rows["alice"] + rows["bob"]))
    digits = {**DIGITS, "num-server-rounds": rounds}
    minilm = {**MINILM, "num-server-rounds": rounds}
    engines: dict[str, dict[str, list[dict]]] = {"digits": {}, "MiniLM + LoRA": {}}
    engines["digits"]["simulation"] = simulate(digits, 2, "deployment-sim-digits")[1]
    engines["MiniLM + LoRA"]["simulation"] = simulate(
        {**minilm, "dataset": str(pooled), "server-test-fraction": SERVER_TEST_ROWS / (
            SERVER_TEST_ROWS + len(rows["alice"]) + len(rows["bob"])),
         "partitioner": "iid"}, 2, "deployment-sim-minilm")[1]
    engines["digits"]["loopback"] = _deployed(
        folder, digits, [{"client-id": f"node-{p + 1}", "partition-id": str(p),
                          "num-partitions": "2", "model": "cnn"} for p in range(2)],
        "loopback-digits")
    engines["MiniLM + LoRA"]["loopback"] = _deployed(
        folder, {**minilm, "dataset": str(files["server"])},
        [{"client-id": name, "data-path": str(files[name]), "model": "minilm"}
         for name in ("alice", "bob")], "loopback-minilm")
    docker = "not run with --quick" if quick else _docker(rounds)
    if isinstance(docker, dict):
        engines["digits"]["docker-compose"] = docker["digits"]
        engines["MiniLM + LoRA"]["docker-compose"] = docker["agnews"]

    lines = ["| job | engine | mean s/round | / simulation | final accuracy |",
             "|---|---|---|---|---|"]
    for job, runs in engines.items():
        simulated = _mean(runs["simulation"], "round_seconds")
        for engine, rows in runs.items():
            seconds = _mean(rows, "round_seconds")
            lines.append(f"| {job} | {engine} | {seconds:.1f} | {seconds / simulated:.1f}x | "
                         f"{rows[-1]['eval_accuracy']:.4f} |")
    if not isinstance(docker, dict):
        lines.append(f"\nThe docker-compose topology was not measured: {docker}.")
    lines += ["", "Where a round's seconds go (means over rounds; client columns are the mean "
              "of the 2 clients' train replies, 0 where a warm process served the message):", "",
              "| job | engine | " + " | ".join(p.removesuffix("_seconds").replace("_", " ")
                                               for p in PHASES) + " |",
              "|---|---|" + "---|" * len(PHASES)]
    for job, runs in engines.items():
        for engine, rows in runs.items():
            lines.append(f"| {job} | {engine} | "
                         + " | ".join(f"{_mean(rows, p):.1f}" for p in PHASES) + " |")
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(6, 3))
    names = list(engines["digits"])
    for offset, (job, runs) in zip((-0.2, 0.2), engines.items()):
        axis.bar(np.arange(len(names)) + offset, [_mean(runs[n], "round_seconds") for n in names],
                 width=0.4, label=job)
    axis.set_xticks(np.arange(len(names)), names)
    axis.set(ylabel="seconds per round", title="The same jobs on each engine")
    axis.legend()
    name = "deployment-quick" if quick else "deployment"
    lines += ["", save_plot(figure, out_dir, name)]
    return write_report(name, "Simulation, loopback deployment and docker-compose",
                        f"python -m bench deployment{' --quick' if quick else ''}",
                        "\n".join(lines), out_dir)
