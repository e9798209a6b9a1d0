"""Mosaic against FedAvg and FedProx at equal total rounds, on skewed splits.

    python -m bench.mosaic digits [--rounds 20]

(Mosaic on AG News with MiniLM + LoRA, next to every other strategy on the same splits:
``python -m bench accuracy``.)
digits: the CNN, 10 clients, Dirichlet 0.01, 0.1 and 1.0; Mosaic warms up for half the
rounds, trains generators in the next and continues with FedAvg. Same seed
(42), splits and total rounds in every row; global accuracy on the server's test split.
The second Mosaic row trains the meta model on the prototypes of every round (the
official code's reading, ``mosaic.prototype-rounds = all``). Reports, per row, every round, the final and best accuracy, and for Mosaic the accuracy
just before and after distillation, the teacher's, the meta model's prototype accuracy, the
distillation KL and the wall time of each stage. Expected duration on 2 CPU cores: about
15 minutes.
"""

from __future__ import annotations

import argparse
import re

from bench.common import simulate, write_report

DIGITS = {"dataset": "digits", "model": "cnn", "lr": 0.01, "local-epochs": 2,
          # Dirichlet 0.01 leaves two clients with 2 train examples each; k <= 2 for all.
          "mosaic.prototypes": 2}
ALPHAS = {"digits": (0.01, 0.1, 1.0)}


def _stage_seconds(rows: list[dict]) -> str:
    by_stage: dict[str, float] = {}
    for row in rows:
        by_stage[row["mosaic_stage"]] = by_stage.get(row["mosaic_stage"], 0.0) + row["round_seconds"]
    generator = next(r for r in rows if r["mosaic_stage"] == "generator")
    server = generator.get("mosaic_seconds", {})
    return (f"warm-up {by_stage.get('warmup', 0.0):.0f} s, generator round "
            f"{by_stage['generator']:.0f} s (clients' generator training "
            f"{generator.get('generator_seconds', 0.0):.1f} s mean per client; server: experts "
            f"{server.get('experts', 0.0):.1f} s, meta model {server.get('meta', 0.0):.1f} s, "
            f"distillation {server.get('distill', 0.0):.1f} s), FedAvg after "
            f"{by_stage.get('fedavg', 0.0):.0f} s")


def _alpha_table(alpha: float, results: dict[str, tuple[list[dict], float]],
                 rounds: int, warmup: int) -> list[str]:
    labels = list(results)
    lines = [f"### Dirichlet {alpha}", "", "| round | " + " | ".join(labels) + " |",
             "|---" * (1 + len(labels)) + "|"]
    for i in range(rounds):
        mark = " (generator round)" if i == warmup else ""
        lines.append(f"| {i + 1}{mark} | " + " | ".join(
            f"{results[label][0][i]['eval_accuracy']:.4f}" for label in labels) + " |")
    fedavg_final = results["fedavg"][0][-1]["eval_accuracy"]
    lines += ["", "| row | final acc | best acc | final − FedAvg's | wall s |",
              "|---|---|---|---|---|"]
    for label in labels:
        rows, seconds = results[label]
        final = rows[-1]["eval_accuracy"]
        lines.append(f"| {label} | {final:.4f} | {max(r['eval_accuracy'] for r in rows):.4f} | "
                     f"{final - fedavg_final:+.4f} | {seconds:.0f} |")
    for label in (l for l in labels if l.startswith("mosaic")):
        lines += _generator_round(label, results[label][0])
    return lines


def _generator_round(label: str, rows: list[dict]) -> list[str]:
    generator = next(r for r in rows if r["mosaic_stage"] == "generator")
    if "mosaic_distillation_skipped" in generator:
        lines = ["", f"{label} did not distil: {generator['mosaic_distillation_skipped']}"]
    else:
        lines = ["", f"{label}, generator round: accuracy before distillation "
                  f"{generator['mosaic_accuracy_before_distillation']:.4f}, after "
                  f"{generator['mosaic_accuracy_after_distillation']:.4f}; the teacher (meta "
                  f"model over the experts) {generator['mosaic_teacher_accuracy']:.4f}; meta "
                  f"model on its "
                  f"{generator['mosaic_prototypes']} prototypes "
                  f"{generator['mosaic_meta_prototype_accuracy']:.4f}; distillation KL to the "
                  f"teacher {generator['mosaic_distill_kl_before']:.4f} -> "
                  f"{generator['mosaic_distill_kl_after']:.4f}; generators "
                  f"{len(generator['mosaic_generators'])}, skipped "
                  f"{generator['mosaic_generators_skipped_count']}."]
    return lines + [f"Stage wall times: {_stage_seconds(rows)}.", ""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("suite", choices=ALPHAS)
    parser.add_argument("--rounds", type=int, default=None)
    args = parser.parse_args()
    rounds = args.rounds or 20
    warmup, data = rounds // 2, DIGITS
    lines = [f"{args.suite}: 10 clients, {rounds} rounds in every row, seed 42. Mosaic: "
             f"{warmup} warm-up rounds (FedAvg), generator round {warmup + 1}, then FedAvg; "
             f"run config `{data}` on top of the defaults (FedProx mu 0.01).", ""]
    mosaic = {"strategy": "mosaic", "mosaic.warmup-rounds": warmup}
    variants = [("mosaic", mosaic),
                ("mosaic (all rounds' prototypes)", {**mosaic, "mosaic.prototype-rounds": "all"}),
                ("fedavg", {"strategy": "fedavg"}), ("fedprox", {"strategy": "fedprox"})]
    for alpha in ALPHAS[args.suite]:
        results = {}
        for label, overrides in variants:
            _, rows, seconds = simulate({**data, "partitioner": "dirichlet",
                                         "dirichlet-alpha": alpha, "seed": 42, **overrides,
                                         "num-server-rounds": rounds}, 10,
                                        f"mosaic-{args.suite}-{alpha}-"
                                        + re.sub(r"\W+", "-", label).strip("-"))
            results[label] = (rows, seconds)
        lines += _alpha_table(alpha, results, rounds, warmup)
    write_report(f"mosaic-{args.suite}", f"Mosaic vs FedAvg vs FedProx ({args.suite})",
                 f"python -m bench.mosaic {args.suite} --rounds {rounds}", "\n".join(lines))


if __name__ == "__main__":
    main()
