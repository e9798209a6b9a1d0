"""FedRef against FedAvg and FedProx under rotating participation.

    python -m bench.fedref digits [--rounds 20]
    python -m bench.fedref agnews [--rounds 8]

10 clients, Dirichlet 0.1, client-rotation on (3 clients train each round, all 10
evaluate), the same seed, splits and rounds for every strategy. Reports the global
accuracy per round, the forgetting measure (accuracy of the new global model on the local
test splits of the clients that did not train in that round), and the rounds each
strategy needs to reach FedAvg's final accuracy. Expected duration on 2 CPU cores: digits
about 2 minutes; agnews (MiniLM + LoRA) about 1 minute a round per strategy.
"""

from __future__ import annotations

import argparse

import numpy as np

from bench.common import AG_NEWS, rounds_to_reach, simulate, write_report

STRATEGIES = ("fedavg", "fedprox", "fedref")
SUITES = {
    "digits": {"dataset": "digits", "model": "cnn", "lr": 0.01, "local-epochs": 2},
    "agnews": {"dataset": str(AG_NEWS), "model": "minilm", "lr": 0.003, "local-epochs": 1},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("suite", choices=SUITES)
    parser.add_argument("--rounds", type=int, default=None)
    args = parser.parse_args()
    rounds = args.rounds or (20 if args.suite == "digits" else 8)
    common = {**SUITES[args.suite], "partitioner": "dirichlet", "dirichlet-alpha": 0.1,
              "client-rotation": True, "fraction-train": 0.3, "num-server-rounds": rounds,
              "seed": 42}
    results = {}
    for strategy in STRATEGIES:
        _, rows, seconds = simulate({**common, "strategy": strategy}, 10,
                                    f"fedref-{args.suite}-{strategy}")
        results[strategy] = (rows, seconds)

    target = results["fedavg"][0][-1]["eval_accuracy"]
    header = "| round | " + " | ".join(f"{s} acc | {s} forgetting acc" for s in STRATEGIES) + " |"
    lines = [f"{args.suite}: 10 clients, Dirichlet 0.1, rotation 3 clients/round, {rounds} "
             f"rounds, seed 42. 'forgetting acc' = accuracy of the round's new global model on "
             f"the local test splits of the 7 clients that did not train in that round.", "",
             header, "|---" * (1 + 2 * len(STRATEGIES)) + "|"]
    for i in range(rounds):
        cells = []
        for strategy in STRATEGIES:
            row = results[strategy][0][i]
            cells += [f"{row['eval_accuracy']:.4f}", f"{row['nonparticipant_accuracy']:.4f}"]
        lines.append(f"| {i + 1} | " + " | ".join(cells) + " |")
    lines += ["", "| strategy | final acc | best acc | mean forgetting acc | rounds to FedAvg's "
              f"final ({target:.4f}) | wall s |", "|---|---|---|---|---|---|"]
    for strategy in STRATEGIES:
        rows, seconds = results[strategy]
        lines.append(
            f"| {strategy} | {rows[-1]['eval_accuracy']:.4f} | "
            f"{max(r['eval_accuracy'] for r in rows):.4f} | "
            f"{np.mean([r['nonparticipant_accuracy'] for r in rows]):.4f} | "
            f"{rounds_to_reach(rows, target) or 'not reached'} | {seconds:.0f} |")
    write_report(f"fedref-{args.suite}", f"FedRef vs FedAvg vs FedProx ({args.suite})",
                 f"python -m bench.fedref {args.suite} --rounds {rounds}", "\n".join(lines))


if __name__ == "__main__":
    main()
