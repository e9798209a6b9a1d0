"""FedMerge with d = 1, 3, 5 against FedAvg, on the clients' own test splits.

    python -m bench.fedmerge digits [--rounds 20]
    python -m bench.fedmerge agnews [--rounds 5]

digits: pathological split, 2 classes per client; agnews: MiniLM + LoRA, Dirichlet 0.1.
10 clients, all train and evaluate every round, the same seed and splits for every row.
Personalised accuracy = the unweighted mean over clients of each client's accuracy on its
own local test split: for FedMerge with its own merged model, for FedAvg with the global
model (no local fine-tuning in either). Expected duration on 2 CPU cores: digits about
2 minutes; agnews about 12 minutes a run at 5 rounds (4 runs).
"""

from __future__ import annotations

import argparse

from bench.common import AG_NEWS, simulate, write_report

RUNS = (("fedavg", {"strategy": "fedavg"}),
        ("fedmerge d=1", {"strategy": "fedmerge", "fedmerge.num-global-models": 1}),
        ("fedmerge d=3", {"strategy": "fedmerge", "fedmerge.num-global-models": 3}),
        ("fedmerge d=5", {"strategy": "fedmerge", "fedmerge.num-global-models": 5}))
SUITES = {
    "digits": {"dataset": "digits", "model": "cnn", "lr": 0.01, "local-epochs": 2,
               "partitioner": "pathological", "pathological-classes": 2},
    "agnews": {"dataset": str(AG_NEWS), "model": "minilm", "lr": 0.003, "local-epochs": 1,
               "partitioner": "dirichlet", "dirichlet-alpha": 0.1},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("suite", choices=SUITES)
    parser.add_argument("--rounds", type=int, default=None)
    args = parser.parse_args()
    rounds = args.rounds or (20 if args.suite == "digits" else 5)
    common = {**SUITES[args.suite], "num-server-rounds": rounds, "seed": 42}
    results = {}
    for label, overrides in RUNS:
        name = f"fedmerge-{args.suite}-{label.replace(' ', '').replace('=', '')}"
        _, rows, seconds = simulate({**common, **overrides}, 10, name)
        results[label] = (rows, seconds)

    key = "client_accuracy_per_client_mean"
    lines = [f"{args.suite}: 10 clients, {SUITES[args.suite]['partitioner']} split, {rounds} "
             "rounds, seed 42. Cells: personalised accuracy (mean over clients, each on its "
             "own test split; FedAvg: its global model on the same splits).", "",
             "| round | " + " | ".join(label for label, _ in RUNS) + " |",
             "|---" * (1 + len(RUNS)) + "|"]
    for i in range(rounds):
        lines.append(f"| {i + 1} | " + " | ".join(
            f"{results[label][0][i][key]:.4f}" for label, _ in RUNS) + " |")
    lines += ["", "| run | final personalised | best personalised | final global (server "
              "test; FedMerge: uniform merge) | wall s |", "|---|---|---|---|---|"]
    for label, _ in RUNS:
        rows, seconds = results[label]
        lines.append(f"| {label} | {rows[-1][key]:.4f} | {max(r[key] for r in rows):.4f} | "
                     f"{rows[-1]['eval_accuracy']:.4f} | {seconds:.0f} |")
    write_report(f"fedmerge-{args.suite}", f"FedMerge vs FedAvg ({args.suite})",
                 f"python -m bench.fedmerge {args.suite} --rounds {rounds}", "\n".join(lines))


if __name__ == "__main__":
    main()
