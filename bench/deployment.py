"""Seconds per round of the same tiny job in simulation and in a loopback deployment.

    python -m bench deployment [--quick]

The job: tiny-bert + LoRA, 2 clients, 2 rounds, 4 local epochs, sequence length 16
(--quick: 1 round of 1 epoch). The
deployment is the loopback one of tests/test_deployment.py (TLS, SuperNode authentication,
process isolation with separate SuperExecs as in the compose file, each client reading its
own file); the simulation is Flower's engine (Ray) with 2 partitions of a file like theirs.
Expected duration: about 3 minutes; --quick 2.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np

from bench.common import pyplot, save_plot, simulate, write_report
from tests.deployment import loopback, write_topics

JOB = {"model": "tiny-bert", "lr": 0.05, "local-epochs": 4, "max-seq-len": 16,
       "num-server-rounds": 2, "partitioner": "iid"}


def run(quick: bool, out_dir: Path) -> Path:
    job = {**JOB, "num-server-rounds": 1, "local-epochs": 1} if quick else JOB
    folder = Path(tempfile.mkdtemp(prefix="pollen-deploy-"))
    server = write_topics(folder / "server.csv", 400, ["sport", "money", "space", "music"], 1)
    _, simulated, _ = simulate({**job, "dataset": str(server)}, 2, "deployment-simulation")
    with loopback(folder) as link:
        for i, name in enumerate(("alice", "bob"), start=1):
            data = write_topics(folder / f"{name}.csv", 160, ["sport", "money", "space", "music"],
                                i + 1)
            link.start_client(i, {"client-id": name, "data-path": str(data),
                                  "model": "tiny-bert", "device": "cpu"})
        settings = " ".join(f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}"
                            for k, v in job.items() if k != "partitioner")
        done = link.submit(f"{settings} min-clients=2 dataset='{server}' "
                           f"output-dir='{folder / 'runs'}' run-name='loopback'")
        if done.returncode != 0:
            raise RuntimeError((done.stdout + done.stderr)[-3000:])
    deployed = [json.loads(line) for line in
                (folder / "runs" / "loopback" / "metrics.jsonl").read_text().splitlines()]
    lines = ["| engine | " + " | ".join(f"round {r['round']} s" for r in simulated)
             + " | mean s/round | final accuracy |", "|---" * (len(simulated) + 3) + "|"]
    for name, rows in (("simulation (Ray, in-process)", simulated),
                       ("loopback deployment (TLS, node auth, SuperExec per node)", deployed)):
        seconds = [r["round_seconds"] for r in rows]
        lines.append(f"| {name} | " + " | ".join(f"{s:.1f}" for s in seconds)
                     + f" | {np.mean(seconds):.1f} | {rows[-1]['eval_accuracy']:.4f} |")
    ratio = np.mean([r["round_seconds"] for r in deployed]) / np.mean(
        [r["round_seconds"] for r in simulated])
    lines += ["", f"Deployment / simulation seconds per round: {ratio:.1f}x (same job, same "
              "machine, measured in one run)."]
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(5, 3))
    axis.bar(["simulation", "loopback deployment"],
             [np.mean([r["round_seconds"] for r in rows]) for rows in (simulated, deployed)])
    axis.set(ylabel="seconds per round", title="The same job on both engines")
    name = "deployment-quick" if quick else "deployment"
    lines += ["", save_plot(figure, out_dir, name)]
    return write_report(name, "Simulation vs loopback deployment",
                        f"python -m bench deployment{' --quick' if quick else ''}",
                        "\n".join(lines), out_dir)
