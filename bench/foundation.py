"""MiniLM + LoRA on AG News, 10 clients, Dirichlet 0.5: accuracy, bytes and time per round.

    python -m bench.foundation [--rounds 5] [--dataset ../shared/data/ag_news/test.csv]

Runs Flower's simulation engine (Ray, one CPU per client) and reports, per round, the
global accuracy, the bytes that travelled against what sending the full model in the
same messages would cost, and how much of the round's wall time was client training.
Expected duration on 2 CPU cores: about 2.5 minutes a round.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from flwr.app import Array

from bench.common import AG_NEWS, simulate, write_report
from pollen.models import build_backbone


def full_model_bytes(model_name: str, num_classes: int) -> int:
    """Serialized size of every weight of the model, as Flower would send it."""
    backbone = build_backbone(model_name, num_classes, seed=0)
    return sum(len(Array(t.detach().numpy()).data) for t in backbone.state_dict().values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--dataset", default=str(AG_NEWS))
    args = parser.parse_args()

    overrides = {"dataset": args.dataset, "model": "minilm", "partitioner": "dirichlet",
                 "dirichlet-alpha": 0.5, "num-server-rounds": args.rounds, "lr": 0.003,
                 "local-epochs": 1, "seed": 42}
    run_dir, rows, total = simulate(overrides, args.clients, "foundation")
    summary = json.loads((run_dir / "summary.json").read_text())
    full = full_model_bytes("minilm", 4)
    messages_per_round = [r["num_replies"] * 3 for r in rows]  # train down, up, eval down

    lines = [
        f"MiniLM-L6 + LoRA (r=8, q/v + head) on {Path(args.dataset).name}, {args.clients} "
        f"clients, Dirichlet 0.5, {args.rounds} rounds, seed 42; run folder {run_dir}",
        "",
        "| round | global acc | client acc | train loss | MB moved | MB if full model | ratio "
        "| round s | client train s (sum) | client train s (max) | server eval s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r, messages in zip(rows, messages_per_round):
        moved = r["bytes_up"] + r["bytes_down"]
        lines.append(
            f"| {r['round']} | {r['eval_accuracy']:.4f} | {r['client_accuracy']:.4f} | "
            f"{r['train_loss']:.4f} | {moved / 1e6:.2f} | {messages * full / 1e6:.1f} | "
            f"{moved / (messages * full):.5f} | {r['round_seconds']:.1f} | "
            f"{r['client_train_seconds_sum']:.1f} | {r['client_train_seconds_max']:.1f} | "
            f"{r['server_eval_seconds']:.1f} |")
    lines += ["",
              f"travelling parameters {summary['travelling_parameters']:,} of "
              f"{summary['model_parameters']:,}; full model message {full / 1e6:.2f} MB; "
              f"total wall time {total:.0f} s (Ray start-up and setup included); "
              f"mean round {np.mean([r['round_seconds'] for r in rows]):.1f} s"]
    write_report("foundation", "Foundation: MiniLM + LoRA on AG News",
                 "python -m bench.foundation", "\n".join(lines))


if __name__ == "__main__":
    main()
