"""Runs that survive failing clients, and what a checkpoint costs.

    python -m bench.faults

1. digits, 10 clients, 10 rounds, the same seed: a clean run, then one run per fault kind
   with clients 0 and 1 faulty (tests/faults.py: raise, slow past round-timeout, vanish
   mid-round, NaN tensors, wrong shapes), on the in-process grid. Reports rounds completed,
   failures and rejections, and the final accuracy against the clean run's.
2. MiniLM + LoRA with FedMerge (d = 3) and 10 clients' merge weights: checkpoint size on
   disk and the time to write one (the per-round cost with checkpoint-every=1).
Expected duration on 2 CPU cores: about 2 minutes.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import RUNS, write_report
from client_app.app import app as client_app
from pollen.adapters import travelling_state
from pollen.config import RunConfig
from pollen.models import build_model
from server_app.app import run
from server_app.checkpoints import latest_checkpoint, save_checkpoint
from strategies import build_strategy, run_config
from strategies.directory import ClientDirectory
from strategies.spec import ServerSetup
from tests.faults import FAULTS, SLOW_SECONDS, grid_with_fault
from tests.localgrid import LocalGrid

ROUNDS = 10


def fault_table() -> list[str]:
    lines = ["| run | rounds completed / planned | failures (all rounds) | replies rejected "
             "| final accuracy | vs clean |", "|---|---|---|---|---|---|"]
    clean_accuracy = None
    for fault in ("clean", *FAULTS):
        config = RunConfig(num_server_rounds=ROUNDS, output_dir=str(RUNS),
                           run_name=f"faults-{fault}-{time.strftime('%H%M%S')}",
                           round_timeout=SLOW_SECONDS * 0.6, local_epochs=2)
        grid = (LocalGrid.simulation(client_app, 10) if fault == "clean"
                else grid_with_fault(10, fault, faulty_clients=(0, 1)))
        rows = run(grid, config).read_metrics()
        final = rows[-1]["eval_accuracy"]
        clean_accuracy = final if clean_accuracy is None else clean_accuracy
        lines.append(f"| {fault} | {len(rows)} / {ROUNDS} | {sum(r['num_failures'] for r in rows)} "
                     f"| {sum(len(r['rejections']) for r in rows)} | {final:.4f} | "
                     f"{final - clean_accuracy:+.4f} |")
    return lines


def checkpoint_costs(repeats: int = 5) -> list[str]:
    config = run_config({"model": "minilm", "strategy": "fedmerge", "fedmerge.num-global-models": 3})
    template = build_model(config, 4)
    directory = ClientDirectory(config.to_mapping(), timeout=10)
    strategy = build_strategy(ServerSetup(config, directory, {config.model: template},
                                          {config.model: travelling_state(template)}, 4,
                                          "text"))
    rng = np.random.default_rng(0)
    strategy.w = {str(i): rng.normal(size=3) for i in range(10)}
    folder = Path(tempfile.mkdtemp())
    seconds = []
    for r in range(1, repeats + 1):
        started = time.perf_counter()
        path = save_checkpoint(folder, r, strategy, keep=3)
        seconds.append(time.perf_counter() - started)
    size = sum(p.stat().st_size for p in path.iterdir())
    started = time.perf_counter()
    latest_checkpoint(folder)
    read_seconds = time.perf_counter() - started
    shutil.rmtree(folder)
    return [f"FedMerge d=3 on MiniLM + LoRA (75,268 travelling parameters per model), 10 "
            f"clients: checkpoint {size / 1e6:.2f} MB on disk; write {np.median(seconds):.3f} s "
            f"(median of {repeats}, fsync included); read and verify {read_seconds:.3f} s."]


def main() -> None:
    lines = [f"digits, 10 clients (0 and 1 faulty), {ROUNDS} rounds, seed 42, round-timeout "
             f"{SLOW_SECONDS * 0.6:.1f} s; the slow clients sleep {SLOW_SECONDS} s.", "",
             *fault_table(), "", *checkpoint_costs()]
    write_report("faults", "Failing clients and checkpoint costs", "python -m bench.faults",
                 "\n".join(lines))


if __name__ == "__main__":
    main()
