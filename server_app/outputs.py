"""Everything a run leaves under ``<output-dir>/<run-name>/``.

config.json (resolved config), metrics.jsonl (one object per round, appended and
fsynced as each round ends), summary.json, plot.png and model/ (the final model).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from pollen.config import ConfigError, RunConfig


class RunOutputs:
    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir

    @classmethod
    def create(cls, config: RunConfig) -> RunOutputs:
        """A new, empty run folder; an existing non-empty one is never overwritten."""
        root = Path(config.output_dir).expanduser().resolve()
        name = config.run_name or f"{config.strategy}-{config.model}-{time.strftime('%Y%m%d-%H%M%S')}"
        run_dir = root / name
        if run_dir.exists() and any(run_dir.iterdir()):
            if config.run_name:
                raise ConfigError(f"run folder {run_dir} already holds a run; choose another "
                                  "run-name or output-dir")
            run_dir = root / f"{name}-{os.getpid()}"
        run_dir.mkdir(parents=True, exist_ok=True)
        outputs = cls(run_dir)
        (run_dir / "config.json").write_text(config.to_json() + "\n")
        return outputs

    @property
    def metrics_path(self) -> Path:
        return self.run_dir / "metrics.jsonl"

    @property
    def model_dir(self) -> Path:
        return self.run_dir / "model"

    def append_metrics(self, record: dict) -> None:
        with self.metrics_path.open("a") as handle:
            handle.write(json.dumps(record, sort_keys=True) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def read_metrics(self) -> list[dict]:
        if not self.metrics_path.exists():
            return []
        return [json.loads(line) for line in self.metrics_path.read_text().splitlines() if line]

    def write_summary(self, summary: dict) -> None:
        (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")

    def plot(self) -> Path:
        """Accuracy (server test split and clients' local splits) and loss per round."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        rows = self.read_metrics()
        rounds = [r["round"] for r in rows]
        figure, (acc_axis, loss_axis) = plt.subplots(1, 2, figsize=(10, 4))
        acc_axis.plot(rounds, [r["eval_accuracy"] for r in rows], marker="o",
                      label="global, server test split")
        acc_axis.plot(rounds, [r["client_accuracy"] for r in rows], marker="s",
                      label="clients, local test splits")
        acc_axis.set(xlabel="round", ylabel="accuracy", title="Accuracy")
        acc_axis.legend()
        loss_axis.plot(rounds, [r["train_loss"] for r in rows], marker="o", label="train (clients)")
        loss_axis.plot(rounds, [r["eval_loss"] for r in rows], marker="s", label="server test")
        loss_axis.set(xlabel="round", ylabel="cross-entropy", title="Loss")
        loss_axis.legend()
        figure.suptitle(self.run_dir.name)
        figure.tight_layout()
        path = self.run_dir / "plot.png"
        figure.savefig(path, dpi=100)
        plt.close(figure)
        return path
