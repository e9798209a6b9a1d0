"""FedRef against FedAvg under rotating participation: forgetting over seeds and lambda.

    python -m bench.fedref digits [--seeds 0,1,2,3,4] [--lambdas 0,0.01,0.1] [--rounds 20]
    python -m bench.fedref agnews [--seeds 0,1,2] [--rounds 8]

10 clients, Dirichlet 0.1, client-rotation on (3 clients train each round, all 10
evaluate); every row sees the same seeds, splits and rounds. Rows: FedAvg, FedProx, and
FedRef at each lambda (p = 3, the official warm-up and recency-weighted reference, the
client proximal term on, mu = 0.01). Forgetting is measured as the accuracy of each
round's new global model on the local test splits of the 7 clients that did not train in
that round (``nonparticipant_accuracy``). Reported: that accuracy averaged over the last
half of the rounds (one number per run, then mean +- std over seeds), the final global
accuracy on the server's test split, and whether FedRef's non-participant accuracy is at
least FedAvg's. Each (seed, row) cell is kept in
``pollen-runs/bench/fedref-<suite>-cells-r<rounds>.json``. Duration on 2 CPU cores, one
process: digits about 10 s a run; agnews (MiniLM + LoRA) about 1 minute a round.
"""

from __future__ import annotations

import argparse

import numpy as np

from bench.common import AG_NEWS, RUNS, Cells, mean_std, run_in_process, write_report

SUITES = {
    "digits": {"dataset": "digits", "model": "cnn", "lr": 0.01, "local-epochs": 2},
    "agnews": {"dataset": str(AG_NEWS), "model": "minilm", "lr": 0.003, "local-epochs": 1},
}
ROTATION = {"partitioner": "dirichlet", "dirichlet-alpha": 0.1, "client-rotation": True,
            "fraction-train": 0.3}


def _rows(lambdas: list[float]) -> dict[str, dict]:
    rows = {"fedavg": {"strategy": "fedavg"}, "fedprox": {"strategy": "fedprox"}}
    rows.update({f"fedref lambda={lam:g}": {"strategy": "fedref", "fedref.lambda": lam}
                 for lam in lambdas})
    return rows


def _cell(suite: str, keys: dict, label: str, seed: int, rounds: int) -> dict:
    overrides = {**SUITES[suite], **ROTATION, **keys, "num-server-rounds": rounds,
                 "seed": seed}
    name = f"fedref-{suite}-{label.replace(' ', '-').replace('=', '')}-seed{seed}"
    _, rows, _ = run_in_process(overrides, 10, name)
    return {"nonparticipant": [r["nonparticipant_accuracy"] for r in rows],
            "global": [r["eval_accuracy"] for r in rows]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("suite", choices=SUITES)
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--lambdas", default="0,0.01,0.1")
    parser.add_argument("--rounds", type=int, default=None)
    args = parser.parse_args(argv)
    rounds = args.rounds or (20 if args.suite == "digits" else 8)
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = _rows([float(x) for x in args.lambdas.split(",")])
    cells = Cells(RUNS / f"fedref-{args.suite}-cells-r{rounds}.json")
    settled = slice(rounds // 2, None)
    lines = [f"{args.suite}: 10 clients, Dirichlet 0.1, rotation (3 clients train a round, "
             f"all 10 evaluate), {rounds} rounds, seeds {args.seeds}. Non-participant "
             "accuracy: the round's new global model on the local test splits of the 7 "
             f"clients that did not train in it, averaged over rounds {rounds // 2 + 1}-"
             f"{rounds}.", "",
             "| row | non-participant accuracy | final global accuracy | >= fedavg's |",
             "|---|---|---|---|"]
    forgetting = {}
    for label, keys in rows.items():
        done = [cells.get(seed, label, lambda keys=keys, label=label, seed=seed:
                          _cell(args.suite, keys, label, seed, rounds)) for seed in seeds]
        forgetting[label] = np.array([np.mean(c["nonparticipant"][settled]) for c in done])
        verdict = ("-" if label == "fedavg" else
                   "yes" if forgetting[label].mean() >= forgetting["fedavg"].mean() else "no")
        lines.append(f"| {label} | {mean_std(forgetting[label])} | "
                     f"{mean_std([c['global'][-1] for c in done])} | {verdict} |")
    write_report(f"fedref-{args.suite}", f"FedRef vs FedAvg under rotation ({args.suite})",
                 f"python -m bench.fedref {args.suite} --seeds {args.seeds} --lambdas "
                 f"{args.lambdas} --rounds {rounds}", "\n".join(lines))


if __name__ == "__main__":
    main()
