"""What every suite needs: one Flower simulation run, its metrics, and table helpers."""

from __future__ import annotations

import json
import time
from pathlib import Path

from flwr.simulation import run_simulation

from client_app.app import app as client_app
from server_app.app import build_server_app, run
from server_app.checkpoints import Checkpoint, latest_checkpoint
from strategies import run_config
from tests.localgrid import LocalGrid

ROOT = Path(__file__).resolve().parents[1]
AG_NEWS = ROOT.parent / "shared" / "data" / "ag_news" / "test.csv"
RUNS = ROOT / "pollen-runs" / "bench"
STARTED = "[0-9]" * 8 + "-" + "[0-9]" * 6  # the glob of ``stamped``'s suffix


def stamped(run_name: str) -> str:
    """A run folder's name: ``run_name`` plus the start time, so reruns never collide."""
    return f"{run_name}-{time.strftime('%Y%m%d-%H%M%S')}"


def simulate(overrides: dict, num_clients: int, run_name: str) -> tuple[Path, list[dict], float]:
    """Run the app in Flower's simulation engine (Ray, one CPU per client).

    Returns the run folder (``stamped``), its metrics rows and the wall time including Ray
    start-up.
    """
    run_name = stamped(run_name)
    overrides = {"output-dir": str(RUNS), "run-name": run_name, **overrides}
    started = time.perf_counter()
    run_simulation(server_app=build_server_app(overrides), client_app=client_app,
                   num_supernodes=num_clients,
                   backend_config={"client_resources": {"num_cpus": 1}})
    seconds = time.perf_counter() - started
    run_dir = Path(overrides["output-dir"]) / run_name
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return run_dir, rows, seconds


def run_in_process(overrides: dict, num_clients: int, run_name: str
                   ) -> tuple[Path, list[dict], float]:
    """``simulate``'s result from one process: clients answered in turn through
    ``tests.localgrid`` instead of Ray workers (smoke runs; no engine start-up).

    A run of this name that was killed after a checkpoint (``_interrupted``) is resumed
    from it (Pollen's ``resume``, which gives the rows of an unbroken run) rather than
    started again, so a long bench cell loses at most a round; its seconds are then this
    part's wall time plus the ``round_seconds`` of the rounds it kept."""
    keys = {"output-dir": str(RUNS), "run-name": stamped(run_name), **overrides}
    kept_rounds = 0
    interrupted = _interrupted(run_name)
    if interrupted:
        run_dir, checkpoint = interrupted
        keys.update({"run-name": run_dir.name, "resume": str(run_dir)})
        kept_rounds = checkpoint.output_lines["metrics.jsonl"]
    started = time.perf_counter()
    outputs = run(LocalGrid.simulation(client_app, num_nodes=num_clients), run_config(keys))
    seconds = time.perf_counter() - started
    rows = outputs.read_metrics()
    return (outputs.run_dir, rows,
            seconds + sum(row["round_seconds"] for row in rows[:kept_rounds]))


def _interrupted(run_name: str) -> tuple[Path, Checkpoint] | None:
    """The newest run folder of ``run_name`` and its last checkpoint, if it was killed
    mid-way: it holds a checkpoint but never finished (no summary.json)."""
    runs = sorted(RUNS.glob(f"{run_name}-{STARTED}"))
    if not runs or (runs[-1] / "summary.json").exists():
        return None
    checkpoint = latest_checkpoint(runs[-1])
    return (runs[-1], checkpoint) if checkpoint else None


class Cells:
    """A bench's (seed, row) results, kept in a JSON file as each ends, so that an
    interrupted bench resumes where it stopped; keys are ``"<seed>/<row>"``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.done = json.loads(path.read_text()) if path.is_file() else {}

    def get(self, seed: int, row: str, compute) -> dict:
        """The stored cell, or ``compute()``'s (a JSON-able dict), stored now."""
        key = f"{seed}/{row}"
        if key not in self.done:
            started = time.perf_counter()
            self.done[key] = compute()
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps(self.done, indent=1))
            print(f"{key}: {time.perf_counter() - started:.0f} s", flush=True)
        return self.done[key]

    def of(self, row: str, seeds: list[int]) -> list[dict]:
        """The row's cells over ``seeds``, those done so far."""
        return [self.done[f"{s}/{row}"] for s in seeds if f"{s}/{row}" in self.done]


def mean_std(values) -> str:
    """``mean +- std`` (the sample std over seeds; 0 for one seed)."""
    import numpy as np

    values = np.asarray(values, dtype=float)
    return f"{values.mean():.3f} +- {values.std(ddof=1 if len(values) > 1 else 0):.3f}"


def gap_and_larger_std(method, baseline) -> tuple[float, float]:
    """The method's mean minus the baseline's, and the larger of their sample stds over
    seeds: a method "wins" only when the gap exceeds that std (the project's rule)."""
    import numpy as np

    method, baseline = np.asarray(method, dtype=float), np.asarray(baseline, dtype=float)
    ddof = 1 if min(len(method), len(baseline)) > 1 else 0
    return (float(method.mean() - baseline.mean()),
            float(max(method.std(ddof=ddof), baseline.std(ddof=ddof))))


def place(gap: float, larger_std: float) -> str:
    """A method's place against its baseline by that rule."""
    return ("a win" if gap > larger_std else "a loss" if gap < -larger_std
            else "level (within one std)")


def rounds_to_reach(rows: list[dict], target: float) -> int | None:
    """First round whose global accuracy is at least ``target``; None if never."""
    return next((r["round"] for r in rows if r["eval_accuracy"] >= target), None)


DOCS = ROOT / "docs" / "benchmarks"


def write_report(name: str, title: str, command: str, body: str,
                 out_dir: Path = DOCS) -> Path:
    out = out_dir / f"{name}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(f"# {title}\n\nCommand: `{command}`\n\n{body}\n")
    print(body)
    return out


def save_plot(figure, out_dir: Path, name: str) -> str:
    """Save a matplotlib figure as ``<out_dir>/<name>.png``; the markdown that shows it."""
    out_dir.mkdir(parents=True, exist_ok=True)
    figure.savefig(out_dir / f"{name}.png", dpi=100, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(figure)
    return f"![{name}]({name}.png)"


def pyplot():
    """matplotlib's pyplot on the Agg backend (no display here or in CI)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
