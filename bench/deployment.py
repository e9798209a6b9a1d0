"""Seconds per round of the same tiny job in simulation and in a loopback deployment.

    python -m bench.deployment

The job: tiny-bert + LoRA, 2 clients, 2 rounds, 4 local epochs, sequence length 16. The
deployment is the loopback one of tests/test_deployment.py (TLS, SuperNode authentication,
process isolation with separate SuperExecs as in the compose file, each client reading its
own file); the simulation is Flower's engine (Ray) with 2 partitions of a file like theirs.
Expected duration: about 3 minutes.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np

from bench.common import simulate, write_report
from tests.deployment import loopback, write_topics

JOB = {"model": "tiny-bert", "lr": 0.05, "local-epochs": 4, "max-seq-len": 16,
       "num-server-rounds": 2, "partitioner": "iid"}


def main() -> None:
    folder = Path(tempfile.mkdtemp(prefix="pollen-deploy-"))
    server = write_topics(folder / "server.csv", 400, ["sport", "money", "space", "music"], 1)
    _, simulated, _ = simulate({**JOB, "dataset": str(server)}, 2, "deployment-simulation")
    with loopback(folder) as link:
        for i, name in enumerate(("alice", "bob"), start=1):
            data = write_topics(folder / f"{name}.csv", 160, ["sport", "money", "space", "music"],
                                i + 1)
            link.start_client(i, {"client-id": name, "data-path": str(data),
                                  "model": "tiny-bert", "device": "cpu"})
        settings = " ".join(f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}"
                            for k, v in JOB.items() if k != "partitioner")
        done = link.submit(f"{settings} min-clients=2 dataset='{server}' "
                           f"output-dir='{folder / 'runs'}' run-name='loopback'")
        if done.returncode != 0:
            raise RuntimeError((done.stdout + done.stderr)[-3000:])
    deployed = [json.loads(line) for line in
                (folder / "runs" / "loopback" / "metrics.jsonl").read_text().splitlines()]
    lines = ["| engine | round 1 s | round 2 s | mean s/round | final accuracy |",
             "|---|---|---|---|---|"]
    for name, rows in (("simulation (Ray, in-process)", simulated),
                       ("loopback deployment (TLS, node auth, SuperExec per node)", deployed)):
        seconds = [r["round_seconds"] for r in rows]
        lines.append(f"| {name} | {seconds[0]:.1f} | {seconds[1]:.1f} | {np.mean(seconds):.1f} | "
                     f"{rows[-1]['eval_accuracy']:.4f} |")
    ratio = np.mean([r["round_seconds"] for r in deployed]) / np.mean(
        [r["round_seconds"] for r in simulated])
    lines += ["", f"Deployment / simulation seconds per round: {ratio:.1f}x (same job, same "
              "machine, measured in one run)."]
    write_report("deployment", "Simulation vs loopback deployment", "python -m bench.deployment",
                 "\n".join(lines))


if __name__ == "__main__":
    main()
