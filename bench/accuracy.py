"""Every strategy on the same work: digits (CNN) and AG News (MiniLM + LoRA).

    python -m bench accuracy [--quick]

Every row: 10 clients, Dirichlet 0.1, seed 42, the same rounds, and a stratified 5% of
the training pool held by the server (so guided and central have their data, and every
row's clients hold exactly the same examples). Family strategies run one family (the
same model as every other row); ``python -m bench.heterotune`` compares them across
backbones. Mosaic warms up for half the rounds (digits) or one round (AG News).
AG News: 3 rounds, half the clients train each round (a seeded sample, the same for every
row; Mosaic's generator round trains all). Reports final and best global accuracy (the
server's test split), the clients' personalised accuracy (FedMerge: each client's own
merged model on its local test split), rounds to reach FedAvg's final accuracy and wall
time. --quick: digits, 5 clients, 2 rounds, Mosaic with short generator, meta model and
distillation phases, clients run in turn in this process instead of Flower's simulation
engine.
Expected duration on 2 CPU cores: about 55 minutes (digits 8, AG News 47); --quick 1.
"""

from __future__ import annotations

from pathlib import Path

from bench.common import (
    AG_NEWS,
    pyplot,
    rounds_to_reach,
    run_in_process,
    save_plot,
    simulate,
    write_report,
)
from pollen.progress import Progress

COMMON = {"partitioner": "dirichlet", "dirichlet-alpha": 0.1, "seed": 42,
          "server-data-fraction": 0.05}
TASKS = {
    "digits": {"dataset": "digits", "model": "cnn", "lr": 0.01, "local-epochs": 2},
    "agnews": {"dataset": str(AG_NEWS), "model": "minilm", "lr": 0.003, "local-epochs": 1,
               "fraction-train": 0.5, "mosaic.generator-steps": 100,
               "mosaic.distill-steps": 100, "mosaic.samples-per-generator": 4},
}
ROUNDS = {"digits": 20, "agnews": 3}
QUICK_MOSAIC = {"mosaic.generator-steps": 20, "mosaic.meta-steps": 20,
                "mosaic.distill-steps": 10, "mosaic.samples-per-generator": 8}
STRATEGIES = ["fedavg", "fedprox", "fedref", "fedmerge", "guided", "central", "mosaic",
              "heterotune", "fedavg-per-family", "hetlora"]
NOT_ON_DIGITS = {"heterotune": "DeMA adapts transformer encoders; the CNN has none",
                 "hetlora": "LoRA ranks need a transformer; the CNN's weights travel whole"}


def _overrides(strategy: str, task: str, rounds: int) -> dict:
    extra: dict = {"strategy": strategy}
    if strategy == "mosaic":
        extra["mosaic.warmup-rounds"] = rounds // 2 if task == "digits" else 1
        extra["mosaic.prototypes"] = 2  # Dirichlet 0.1 leaves a digits client 12 examples
    if strategy == "hetlora":
        extra["hetlora.ranks"] = "8"
    return extra


def run(quick: bool, out_dir: Path) -> Path:
    tasks = ["digits"] if quick else ["digits", "agnews"]
    rounds_of = {t: 2 if quick else ROUNDS[t] for t in tasks}
    jobs = [(t, s) for t in tasks for s in STRATEGIES
            if not (t == "digits" and s in NOT_ON_DIGITS)]
    num_clients = 5 if quick else 10
    progress = Progress(len(jobs), "accuracy")
    results: dict[str, dict[str, tuple[list[dict], float]]] = {t: {} for t in tasks}
    for task, strategy in jobs:
        rounds = rounds_of[task]
        config = {**TASKS[task], **COMMON, **(QUICK_MOSAIC if quick else {}),
                  **_overrides(strategy, task, rounds), "num-server-rounds": rounds}
        engine = run_in_process if quick else simulate
        _, rows, seconds = engine(config, num_clients, f"accuracy-{task}-{strategy}")
        results[task][strategy] = (rows, seconds)
        print(progress.step(f"{task} {strategy}: final accuracy "
                            f"{rows[-1]['eval_accuracy']:.4f} in {seconds:.0f} s"), flush=True)
    lines = [f"{num_clients} clients, Dirichlet 0.1, seed 42, server holds 5% of the pool; rounds: "
             + ", ".join(f"{t} {r}" for t, r in rounds_of.items()) + ".", ""]
    plt = pyplot()
    figure, axes = plt.subplots(1, len(tasks), figsize=(6 * len(tasks), 4), squeeze=False)
    for axis, task in zip(axes[0], tasks):
        lines += _table(task, results[task], rounds_of[task])
        for strategy, (rows, _) in results[task].items():
            axis.plot([r["round"] for r in rows], [r["eval_accuracy"] for r in rows],
                      marker=".", label=strategy)
        axis.set(title=task, xlabel="round", ylabel="global accuracy (server test)")
        axis.legend(fontsize=7)
    name = "accuracy-quick" if quick else "accuracy"
    lines.append(save_plot(figure, out_dir, name))
    return write_report(name, "Every strategy on the same work",
                        f"python -m bench accuracy{' --quick' if quick else ''}",
                        "\n".join(lines), out_dir)


def _table(task: str, results: dict[str, tuple[list[dict], float]], rounds: int) -> list[str]:
    target = results["fedavg"][0][-1]["eval_accuracy"]
    lines = [f"### {task}", "", f"| strategy | final acc | best acc | personalised acc | "
             f"rounds to FedAvg's final ({target:.4f}) | wall s |", "|---|---|---|---|---|---|"]
    for strategy in STRATEGIES:
        if strategy not in results:
            lines.append(f"| {strategy} | n/a: {NOT_ON_DIGITS[strategy]} | | | | |")
            continue
        rows, seconds = results[strategy]
        personal = rows[-1].get("personalized_accuracy")
        lines.append(f"| {strategy} | {rows[-1]['eval_accuracy']:.4f} | "
                     f"{max(r['eval_accuracy'] for r in rows):.4f} | "
                     f"{'-' if personal is None else f'{personal:.4f}'} | "
                     f"{rounds_to_reach(rows, target) or 'not reached'} | {seconds:.0f} |")
    mosaic = next((r for r in results.get("mosaic", ([], 0))[0]
                   if r["mosaic_stage"] == "generator"), None)
    if mosaic is not None and "mosaic_distillation_skipped" in mosaic:
        lines += ["", f"Mosaic's generator round ({mosaic['round']}) did not distil: "
                  f"{mosaic['mosaic_distillation_skipped']}."]
    elif mosaic is not None and "mosaic_accuracy_before_distillation" in mosaic:
        seconds = mosaic["mosaic_seconds"]
        lines += ["", f"Mosaic's generator round ({mosaic['round']}): accuracy "
                  f"{mosaic['mosaic_accuracy_before_distillation']:.4f} before distillation, "
                  f"{mosaic['mosaic_accuracy_after_distillation']:.4f} after (the teacher: "
                  f"{mosaic['mosaic_teacher_accuracy']:.4f}); the round took "
                  f"{mosaic['round_seconds']:.0f} s (clients' generators "
                  f"{mosaic.get('generator_seconds', 0.0):.1f} s each on average; server: "
                  f"experts {seconds['experts']:.1f} s, meta model {seconds['meta']:.1f} s, "
                  f"distillation {seconds['distill']:.1f} s)."]
    return lines + [""]
