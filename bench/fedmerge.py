"""FedMerge against FedAvg on the clients' own test splits, over seeds and client counts.

    python -m bench.fedmerge digits [--clients 2,10] [--seeds 0,1,2] [--rounds 20]
    python -m bench.fedmerge agnews [--clients 10] [--seeds 0,1,2] [--rounds 5]

digits: the CNN, pathological split, 2 classes per client; agnews: MiniLM + LoRA,
Dirichlet 0.1. All clients train and evaluate every round; every row sees the same seeds
and splits. Rows: FedAvg; FedMerge with d = 1, 3, 5 at the defaults (the official W step,
lr_W = 1); and FedMerge d = 3 with methods.md's plain W step at lr_W = 100 (the default
before #19), whose step grows with the square of 1 / clients. Personalised accuracy =
the unweighted mean over clients of each client's accuracy on its own local test split:
FedMerge's own merged models, FedAvg's global model (no local fine-tuning in either).
Reported per client count: the final personalised accuracy, mean +- std over seeds, and
the lowest of the last five rounds (a W row flipping between global models shows there);
FedMerge d = 3 "wins" when its mean exceeds FedAvg's by more than the larger std. Each
(seed, row) cell is kept in ``pollen-runs/bench/fedmerge-<suite>-cells-r<rounds>.json``.
Duration on 2 CPU cores, one process: digits 5-20 s a run (90 runs at the defaults,
about 20 minutes); agnews about 10 minutes a run.
"""

from __future__ import annotations

import argparse

import numpy as np

from bench.common import (AG_NEWS, RUNS, Cells, gap_and_larger_std, mean_std,
                          run_in_process, write_report)

ROWS = {"fedavg": {"strategy": "fedavg"},
        "fedmerge d=1": {"strategy": "fedmerge", "fedmerge.num-global-models": 1},
        "fedmerge d=3": {"strategy": "fedmerge", "fedmerge.num-global-models": 3},
        "fedmerge d=5": {"strategy": "fedmerge", "fedmerge.num-global-models": 5},
        "fedmerge d=3, plain step": {"strategy": "fedmerge", "fedmerge.num-global-models": 3,
                                     "fedmerge.w-step": "plain", "fedmerge.lr-w": 100.0}}
SUITES = {
    "digits": {"dataset": "digits", "model": "cnn", "lr": 0.01, "local-epochs": 2,
               "partitioner": "pathological", "pathological-classes": 2},
    "agnews": {"dataset": str(AG_NEWS), "model": "minilm", "lr": 0.003, "local-epochs": 1,
               "partitioner": "dirichlet", "dirichlet-alpha": 0.1},
}
PERSONALISED = "client_accuracy_per_client_mean"


def _cell(suite: str, row: str, clients: int, seed: int, rounds: int) -> dict:
    keys = {**SUITES[suite], **ROWS[row], "num-server-rounds": rounds, "seed": seed}
    name = f"fedmerge-{suite}-{row.replace(' ', '').replace('=', '').replace(',', '-')}"
    _, rows, seconds = run_in_process(keys, clients, f"{name}-c{clients}-seed{seed}")
    return {"personalised": [r[PERSONALISED] for r in rows],
            "global": [r["eval_accuracy"] for r in rows], "seconds": seconds}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("suite", choices=SUITES)
    parser.add_argument("--clients", default=None)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--rounds", type=int, default=None)
    args = parser.parse_args(argv)
    rounds = args.rounds or (20 if args.suite == "digits" else 5)
    client_counts = [int(c) for c in (args.clients or
                                      ("2,10" if args.suite == "digits" else "10")).split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    cells = Cells(RUNS / f"fedmerge-{args.suite}-cells-r{rounds}.json")
    lines = [f"{args.suite}: {SUITES[args.suite]['partitioner']} split, {rounds} rounds, "
             f"seeds {args.seeds}. Personalised accuracy: mean over clients, each on its "
             "own test split (FedAvg: its global model on the same splits). Global: the "
             "server's test split (FedMerge: the uniform merge).", ""]
    for clients in client_counts:
        lines += [f"**{clients} clients**", "",
                  "| row | final personalised | lowest of the last 5 rounds | final global |",
                  "|---|---|---|---|"]
        finals = {}
        for row in ROWS:
            done = [cells.get(seed, f"{row}/c{clients}",
                              lambda row=row, seed=seed: _cell(args.suite, row, clients,
                                                               seed, rounds))
                    for seed in seeds]
            finals[row] = np.array([c["personalised"][-1] for c in done])
            lines.append(f"| {row} | {mean_std(finals[row])} | "
                         f"{mean_std([min(c['personalised'][-5:]) for c in done])} | "
                         f"{mean_std([c['global'][-1] for c in done])} |")
        gap, larger_std = gap_and_larger_std(finals["fedmerge d=3"], finals["fedavg"])
        lines += ["", f"FedMerge d = 3 - FedAvg, final personalised: {gap:+.3f} "
                  f"({'a win' if gap > larger_std else 'not a win'}: the larger std is "
                  f"{larger_std:.3f}).", ""]
    write_report(f"fedmerge-{args.suite}", f"FedMerge vs FedAvg ({args.suite})",
                 f"python -m bench.fedmerge {args.suite} --clients "
                 f"{','.join(map(str, client_counts))} --seeds {args.seeds} --rounds {rounds}",
                 "\n".join(lines))


if __name__ == "__main__":
    main()
