"""Guided merging against FedAvg and the server-only baseline (central).

    python -m bench.guided digits [--rounds 20]
    python -m bench.guided agnews [--rounds 5]

10 clients, Dirichlet 0.1, server data = a stratified 5% of the training pool held out
before partitioning (so every strategy's clients hold exactly the same data), seed 42,
the same rounds for every row. Settings:

- digits (a) in-domain server data; (b) out-of-domain server data (digits-shifted:
  rotated 30 degrees + pixel noise): guided without labels (as methods.md prescribes for
  out-of-domain data; information maximisation, and plain entropy minimisation) and with
  cross-entropy on the shifted labels, central on the shifted labels; (c) (a) with 30% of the clients at 50% label noise.
- agnews (d) MiniLM + LoRA on AG News test.csv, in-domain server data.

Reports global accuracy per round, rounds to reach FedAvg's final accuracy, how often the
fallback won and the mean search time. Expected duration on 2 CPU cores: digits about 6
minutes; agnews about 55 minutes for 5 rounds.
"""

from __future__ import annotations

import argparse
import re

import numpy as np

from bench.common import AG_NEWS, rounds_to_reach, simulate, write_report

BASE = {"partitioner": "dirichlet", "dirichlet-alpha": 0.1, "server-data-fraction": 0.05,
        "seed": 42}
DIGITS = {"dataset": "digits", "model": "cnn", "lr": 0.01, "local-epochs": 2}
AGNEWS = {"dataset": str(AG_NEWS), "model": "minilm", "lr": 0.003, "local-epochs": 1}
SHIFTED = {"server-data": "digits-shifted"}
NOISY = {"client-label-noise": 0.5, "noisy-client-fraction": 0.3}

# setting -> [(row label, overrides)]
SETTINGS = {
    "digits": {
        "(a) in-domain": [("guided", {"strategy": "guided"}),
                          ("guided (search-lr 0.01)", {"strategy": "guided", "guided.search-lr": 0.01}),
                          ("fedavg", {"strategy": "fedavg"}),
                          ("central", {"strategy": "central"})],
        "(b) out-of-domain": [
            ("guided (IM)", {"strategy": "guided", **SHIFTED, "server-data-labeled": False}),
            ("guided (entropy)", {"strategy": "guided", **SHIFTED,
                                  "server-data-labeled": False, "guided.unlabeled-loss": "entropy"}),
            ("guided (CE)", {"strategy": "guided", **SHIFTED}),
            ("fedavg", {"strategy": "fedavg", **SHIFTED}),
            ("central", {"strategy": "central", **SHIFTED})],
        "(c) 30% noisy clients": [("guided", {"strategy": "guided", **NOISY}),
                                  ("fedavg", {"strategy": "fedavg", **NOISY}),
                                  ("central", {"strategy": "central", **NOISY})],
    },
    "agnews": {
        "(d) AG News, in-domain": [("guided", {"strategy": "guided"}),
                                   ("guided (search-lr 0.01)", {"strategy": "guided",
                                                                "guided.search-lr": 0.01}),
                                   ("fedavg", {"strategy": "fedavg"}),
                                   ("central", {"strategy": "central"})],
    },
}


def _setting_table(setting: str, results: dict[str, tuple[list[dict], float]],
                   rounds: int) -> list[str]:
    labels = list(results)
    target = results["fedavg"][0][-1]["eval_accuracy"]
    lines = [f"### {setting}", "", "| round | " + " | ".join(labels) + " |",
             "|---" * (1 + len(labels)) + "|"]
    for i in range(rounds):
        lines.append(f"| {i + 1} | " + " | ".join(
            f"{results[label][0][i]['eval_accuracy']:.4f}" for label in labels) + " |")
    lines += ["", f"| row | final acc | best acc | rounds to FedAvg's final ({target:.4f}) | "
              "fallback won | mean search s | wall s |", "|---|---|---|---|---|---|---|"]
    for label in labels:
        rows, seconds = results[label]
        guided = [r for r in rows if "guided_fallback" in r]
        fallback = (f"{sum(r['guided_fallback'] for r in guided)}/{len(guided)}"
                    if guided else "-")
        search = (f"{np.mean([r['guided_search_seconds'] for r in guided]):.1f}"
                  if guided else "-")
        lines.append(f"| {label} | {rows[-1]['eval_accuracy']:.4f} | "
                     f"{max(r['eval_accuracy'] for r in rows):.4f} | "
                     f"{rounds_to_reach(rows, target) or 'not reached'} | {fallback} | "
                     f"{search} | {seconds:.0f} |")
    return lines + [""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("suite", choices=SETTINGS)
    parser.add_argument("--rounds", type=int, default=None)
    args = parser.parse_args()
    rounds = args.rounds or (20 if args.suite == "digits" else 5)
    data = DIGITS if args.suite == "digits" else AGNEWS
    lines = [f"{args.suite}: 10 clients, Dirichlet 0.1, server data 5% of the pool (held out "
             f"before partitioning), {rounds} rounds, seed 42; guided: atlas 10, 20 Adam "
             "steps (lr 0.1 unless the row says otherwise, batch 32) on 75% of the server "
             "data, fallback checked on the other 25%; central: the server trains on all of its data for "
             f"local-epochs passes a round. Global accuracy on the server's test split.", ""]
    for setting, variants in SETTINGS[args.suite].items():
        results = {}
        for label, overrides in variants:
            name = f"guided-{args.suite}-{setting[1]}-" + re.sub(r"\W+", "-", label).strip("-")
            _, rows, seconds = simulate({**data, **BASE, **overrides,
                                         "num-server-rounds": rounds}, 10, name)
            results[label] = (rows, seconds)
        lines += _setting_table(setting, results, rounds)
    write_report(f"guided-{args.suite}", f"Guided merging vs FedAvg vs central ({args.suite})",
                 f"python -m bench.guided {args.suite} --rounds {rounds}", "\n".join(lines))


if __name__ == "__main__":
    main()
