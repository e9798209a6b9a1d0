"""Everything a run leaves under ``<output-dir>/<run-name>/``.

config.json (resolved config), config-sources.json (where each shared key's value came
from: the run config, or the model's recommendation for a key left at "auto"), metrics.jsonl (one object per round, appended and
fsynced as each round ends), a strategy's own JSON-lines files, summary.json, plot.png,
model/ (the final model) and any other models the strategy saves.
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
        (run_dir / "config-sources.json").write_text(
            json.dumps(config.sources(), indent=2, sort_keys=True) + "\n")
        return outputs

    @classmethod
    def reopen(cls, run_dir: Path, output_lines: dict[str, int]) -> RunOutputs:
        """An existing run folder with its JSON-lines files cut back to a checkpoint's
        line counts (rows written after that checkpoint are written again)."""
        for path in run_dir.glob("*.jsonl"):
            lines = path.read_text().splitlines()[:output_lines.get(path.name, 0)]
            path.write_text("".join(line + "\n" for line in lines))
        return cls(run_dir)

    @property
    def metrics_path(self) -> Path:
        return self.run_dir / "metrics.jsonl"

    def append_jsonl(self, name: str, record: dict) -> None:
        with (self.run_dir / name).open("a") as handle:
            handle.write(json.dumps(record, sort_keys=True) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def read_jsonl(self, name: str) -> list[dict]:
        path = self.run_dir / name
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line]

    def append_metrics(self, record: dict) -> None:
        self.append_jsonl(self.metrics_path.name, record)

    def read_metrics(self) -> list[dict]:
        return self.read_jsonl(self.metrics_path.name)

    def write_summary(self, summary: dict) -> None:
        (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")

    def plot(self) -> Path:
        """Accuracy (server test split and clients' local splits) and loss per round; with
        a merge_weights.jsonl (FedMerge), a heat map of the last round's merge weights."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        rows = self.read_metrics()
        merges = self.read_jsonl("merge_weights.jsonl")
        rounds = [r["round"] for r in rows]
        figure, axes = plt.subplots(1, 3 if merges else 2, figsize=(15 if merges else 10, 4))
        acc_axis, loss_axis = axes[0], axes[1]
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
        if merges:
            weights = merges[-1]["weights"]
            image = axes[2].imshow([weights[c] for c in weights], aspect="auto",
                                   cmap="viridis", vmin=0.0)
            axes[2].set(xlabel="global model j", ylabel="client",
                        title=f"softmax(W), round {merges[-1]['round']}",
                        yticks=range(len(weights)), yticklabels=list(weights),
                        xticks=range(len(next(iter(weights.values())))))
            figure.colorbar(image, ax=axes[2])
        figure.suptitle(self.run_dir.name)
        figure.tight_layout()
        path = self.run_dir / "plot.png"
        figure.savefig(path, dpi=100)
        plt.close(figure)
        return path
