"""What a federated LLM round costs, phase by phase, and what guided and int8 score (#37).

    python -m bench.llm cost --part rounds [--quick] [--seeds 0,1,2]
                                          [--runs fedavg,guided,fedavg-int8]

Section 9's setup (``bench.llm.FEDERATION``: SmolLM2, AG News as generation, 10 clients
at Dirichlet 0.5, 3 a round, 5 rounds of 10 steps of 8 prompts, the server scoring 149
test prompts, no client evaluation), run by ``bench.common.run_in_process`` (the server
and the clients in one process, the clients in turn), for
- fedavg;
- guided, its search at the "auto" budget (``strategies.guided.strategy.SEARCH_BUDGET``);
- fedavg-int8: fedavg with ``wire-dtype='int8'``.
Every round's row gives its phases (pollen's ``server_app.rounds``): the train phase
(the three clients' training, one after another here), aggregation (guided's search),
the clients' evaluation (none here) and the server's, each with the process's peak
resident set during it (reset as the phase starts; Linux). The report gives, per run,
the phases' mean seconds and peak MiB over rounds and seeds, and per seed, side by side
on the same splits: evaluation over training seconds ((evaluate + server evaluation) /
train phase, summed over the rounds), guided's round seconds and peak memory (the
largest phase's) over FedAvg's (the seconds also per training second, which divides out
a machine load that differed between the two cells), and the final exact match of the three runs, mean +- std,
with guided against section 9's 0.811 +- 0.012 and int8 against float32.

Each (seed, run) cell is kept in ``llm-rounds-cells.json`` as it ends (a killed one
resumes from its last round's checkpoint). A cell is some 30-45 minutes on one thread.
--quick: the tiny random Llama, 4 clients, 2 rounds of 2 steps, one seed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bench.common import DOCS, Cells, gap_and_larger_std, mean_std, run_in_process, write_report

RUNS = {"fedavg": {"strategy": "fedavg"}, "guided": {"strategy": "guided"},
        "fedavg-int8": {"strategy": "fedavg", "wire-dtype": "int8"}}
PHASES = ("train", "aggregate", "evaluate", "server_eval")
PHASE_SECONDS = {"train": "train_phase_seconds", "aggregate": "aggregate_seconds",
                 "evaluate": "evaluate_phase_seconds", "server_eval": "server_eval_seconds"}
# Section 9's guided (docs/benchmarks.md, 3 seeds, its search at 20 x 32)
GUIDED_BEFORE = (0.811, 0.012)
EVAL_BOUND, GUIDED_BOUND = 0.25, 1.5  # the bounds


def _cell(run: str, seed: int, quick: bool) -> dict:
    from bench.labelskew import commit
    from bench.llm import _keys

    ran = commit()  # the code this process loaded, not HEAD when the cell ends
    rounds, steps = (2, 2) if quick else (5, 10)
    model = "tiny-llama" if quick else "smollm2"
    keys = _keys(model, seed, rounds, steps, **RUNS[run])
    _, rows, seconds = run_in_process(keys, 4 if quick else 10,
                                      f"llm-rounds{'-quick' if quick else ''}-{run}-seed{seed}")
    return {"commit": ran, "exact_match": rows[-1]["eval_accuracy"], "seconds": seconds,
            "rounds": [{"seconds": {p: r[PHASE_SECONDS[p]] for p in PHASES},
                        "round_seconds": r["round_seconds"],
                        "client_train_seconds_sum": r["client_train_seconds_sum"],
                        "peak_memory_mb": r["peak_memory_mb"],
                        "search_steps": r.get("guided_search_steps"),
                        "search_seconds": r.get("guided_search_seconds")} for r in rows]}


def _eval_over_train(cell: dict) -> float:
    rounds = cell["rounds"]
    return (sum(r["seconds"]["evaluate"] + r["seconds"]["server_eval"] for r in rounds)
            / sum(r["seconds"]["train"] for r in rounds))


def _round_seconds(cell: dict) -> float:
    return float(np.mean([r["round_seconds"] for r in cell["rounds"]]))


def _per_training_second(cell: dict) -> float:
    """Round seconds over train-phase seconds, summed over the rounds: at one seed both
    runs' train phases do the same work (the same clients, steps and prompts), so the
    ratio of this between two runs is their rounds' ratio with the machine's load on
    each divided out (cells that ran beside different benchmarks)."""
    return (sum(r["round_seconds"] for r in cell["rounds"])
            / sum(r["seconds"]["train"] for r in cell["rounds"]))


def _peak(cell: dict) -> float:
    return max(max(r["peak_memory_mb"].values()) for r in cell["rounds"])


def rounds(quick: bool, seeds: list[int], runs: list[str], out_dir: Path = DOCS) -> Path:
    if quick:
        seeds = seeds[:1]
    name = f"llm-rounds{'-quick' if quick else ''}"
    cells = Cells(out_dir / f"{name}-cells.json")
    for seed in seeds:
        for run in runs:
            cells.get(seed, run, lambda run=run, seed=seed: _cell(run, seed, quick))
    done = {run: cells.of(run, seeds) for run in RUNS}
    lines = [f"{'tiny-llama, 4' if quick else 'SmolLM2, 10'} clients (3 a round), seeds "
             f"{', '.join(map(str, seeds))}; phases in seconds (mean over rounds and seeds) "
             "and the process's peak resident set during each (MiB, the largest over "
             "rounds, mean over seeds).", "",
             "| run | seeds done | train | aggregate | evaluate (clients) | server eval | "
             "round | peak MiB train / aggregate / evaluate / server eval | search steps "
             "(s) |", "|---|---|---|---|---|---|---|---|---|"]
    for run, run_cells in done.items():
        if not run_cells:
            continue
        every = [r for c in run_cells for r in c["rounds"]]
        seconds = " | ".join(f"{np.mean([r['seconds'][p] for r in every]):.1f}"
                             for p in PHASES)
        peaks = " / ".join(
            f"{np.mean([max(r['peak_memory_mb'][p] for r in c['rounds']) for c in run_cells]):.0f}"
            for p in PHASES)
        search = ("-" if every[0]["search_steps"] is None else
                  f"{np.mean([r['search_steps'] for r in every]):.0f} "
                  f"({np.mean([r['search_seconds'] for r in every]):.1f})")
        lines.append(f"| {run} | {len(run_cells)} | {seconds} | "
                     f"{np.mean([r['round_seconds'] for r in every]):.1f} | {peaks} | "
                     f"{search} |")
    lines += ["", "Per seed (the same splits): evaluation / training seconds, guided / "
              "fedavg in round seconds and in peak memory, and the final exact match.", "",
              "| seed | fedavg eval/train | guided eval/train | guided/fedavg seconds | "
              "the same per training second | guided/fedavg peak memory | fedavg | guided | "
              "fedavg-int8 |", "|---|---|---|---|---|---|---|---|---|"]
    by_seed = {run: {s: cells.done.get(f"{s}/{run}") for s in seeds} for run in RUNS}

    def cell_text(run, seed, value):
        cell = by_seed[run][seed]
        return "-" if cell is None else value(cell)

    for seed in seeds:
        fedavg, guided = by_seed["fedavg"][seed], by_seed["guided"][seed]
        both = fedavg is not None and guided is not None
        lines.append(
            f"| {seed} | {cell_text('fedavg', seed, lambda c: f'{_eval_over_train(c):.3f}')} | "
            f"{cell_text('guided', seed, lambda c: f'{_eval_over_train(c):.3f}')} | "
            + (f"{_round_seconds(guided) / _round_seconds(fedavg):.2f} | "
               f"{_per_training_second(guided) / _per_training_second(fedavg):.2f} | "
               f"{_peak(guided) / _peak(fedavg):.2f} | " if both else "- | - | - | ")
            + " | ".join(cell_text(run, seed, lambda c: f"{c['exact_match']:.3f}")
                         for run in RUNS) + " |")
    complete = {run: len(c) == len(seeds) for run, c in done.items()}
    if complete["fedavg"]:
        ratios = [_eval_over_train(c) for c in done["fedavg"]]
        lines += ["", f"Evaluation / training, fedavg: {mean_std(ratios)} (bound {EVAL_BOUND}x: "
                  + ("met at every seed)" if max(ratios) <= EVAL_BOUND else "missed)")]
    if complete["fedavg"] and complete["guided"]:
        time_ratio = [_round_seconds(g) / _round_seconds(f)
                      for g, f in zip(done["guided"], done["fedavg"])]
        load_free = [_per_training_second(g) / _per_training_second(f)
                     for g, f in zip(done["guided"], done["fedavg"])]
        memory_ratio = [_peak(g) / _peak(f) for g, f in zip(done["guided"], done["fedavg"])]
        matches = [c["exact_match"] for c in done["guided"]]
        lines += [f"Guided / fedavg: round seconds {mean_std(time_ratio)} (per training "
                  f"second {mean_std(load_free)}), peak memory "
                  f"{mean_std(memory_ratio)} (bound {GUIDED_BOUND}x); guided's exact match "
                  f"{mean_std(matches)} against section 9's {GUIDED_BEFORE[0]} +- "
                  f"{GUIDED_BEFORE[1]} (20 x 32 search): "
                  + ("within one std" if np.mean(matches) >= GUIDED_BEFORE[0] - GUIDED_BEFORE[1]
                     else "below it by more than one std")]
    if complete["fedavg"] and complete["fedavg-int8"]:
        int8 = [c["exact_match"] for c in done["fedavg-int8"]]
        float32 = [c["exact_match"] for c in done["fedavg"]]
        gap, larger_std = gap_and_larger_std(int8, float32)
        lines += [f"int8 against float32 (fedavg): {mean_std(int8)} against "
                  f"{mean_std(float32)}, gap {gap:+.3f} (larger std {larger_std:.3f}; per "
                  "seed " + ", ".join(f"{a - b:+.3f}" for a, b in zip(int8, float32)) + ")"]
    return write_report(name, "What a federated LLM round costs, phase by phase (#37)",
                        f"python -m bench.llm cost --part rounds{' --quick' if quick else ''}",
                        "\n".join(lines), out_dir)
