"""HeteroTune against per-family FedAvg and HetLoRA, and its cost against full fine-tuning.

    python -m bench.heterotune agnews [--seeds 0,1,2] [--rows heterotune,fedavg-per-family]
                                      [--rounds 5]
    python -m bench.heterotune memory

agnews: AG News test.csv, 9 clients (round-robin: 3 each of minilm-l2, minilm-l4 and
minilm), Dirichlet 0.5, lr 0.003, 1 local epoch, the same seeds, splits and rounds for
each of ``--rows``: heterotune (the defaults: absolute layer alignment, alpha 16, CMGA per
tensor), heterotune-cmga-off, heterotune-relative (methods.md's banks by relative depth
and per-family D/U, CMGA over the whole vector), fedavg-per-family (LoRA r=8) and hetlora
(LoRA ranks 4 / 8 / 16 by depth). Reports each family's final global accuracy on the
server's test split and their mean (mean +- std over seeds), the issue's targets against
fedavg-per-family (+0.02 on the mean, +0.05 on the smallest family), and the bytes a
client sends and receives per round against full fine-tuning of its backbone. Each
(seed, row) cell is kept in ``pollen-runs/bench/heterotune-agnews-cells-r<rounds>.json``.
About 10-15 minutes a run on 2 CPU cores.

memory: peak resident memory of one client's local training (64 AG News examples, batch
32, 1 epoch, AdamW) per backbone, with DeMA adapters against full fine-tuning (every
weight trainable), each in a fresh process so that the high-water marks do not mix.
About a minute.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys

import numpy as np

from bench.common import AG_NEWS, RUNS, Cells, mean_std, run_in_process, write_report

FAMILIES = ("minilm-l2", "minilm-l4", "minilm")
COMMON = {"dataset": str(AG_NEWS), "model": "minilm", "model-families": ",".join(FAMILIES),
          "lr": 0.003, "local-epochs": 1, "partitioner": "dirichlet", "dirichlet-alpha": 0.5,
          "seed": 42}
ROWS = {"heterotune": {"strategy": "heterotune"},
        "heterotune-cmga-off": {"strategy": "heterotune", "heterotune.cmga": False},
        "heterotune-relative": {"strategy": "heterotune", "heterotune.layer-alignment":
                                "relative", "heterotune.cmga-granularity": "vector"},
        "fedavg-per-family": {"strategy": "fedavg-per-family"},
        "hetlora": {"strategy": "hetlora", "hetlora.ranks": "4,8,16"}}


def _agnews_cell(row: str, seed: int, rounds: int) -> dict:
    _, rows, seconds = run_in_process({**COMMON, **ROWS[row], "seed": seed,
                                       "num-server-rounds": rounds}, 9,
                                      f"heterotune-agnews-{row}-seed{seed}")
    bytes_per_round = {f: float(np.mean([r["family_bytes_down_per_client"][f]
                                         + r["family_bytes_up_per_client"][f] for r in rows
                                         if f in r["family_bytes_up_per_client"]]))
                       for f in FAMILIES}
    return {"family_accuracy": rows[-1]["family_accuracy"], "seconds": seconds,
            "mean_curve": [r["eval_accuracy"] for r in rows], "bytes": bytes_per_round,
            "cmga_cosines": [r.get("cmga_cosines") for r in rows]}


def agnews(rounds: int, seeds: list[int], rows: list[str]) -> None:
    from pollen.models import build_backbone

    full_bytes = {f: 4 * sum(p.numel() for p in build_backbone(f, 4, 42).parameters())
                  for f in FAMILIES}
    cells = Cells(RUNS / f"heterotune-agnews-cells-r{rounds}.json")
    done = {row: [cells.get(seed, row, lambda row=row, seed=seed: _agnews_cell(row, seed,
                                                                                 rounds))
                  for seed in seeds] for row in rows}
    accuracy = {row: {f: np.array([c["family_accuracy"][f] for c in done[row]])
                      for f in FAMILIES} for row in rows}
    means = {row: np.mean([accuracy[row][f] for f in FAMILIES], axis=0) for row in rows}
    lines = [f"AG News, 9 clients (3 x minilm-l2, 3 x minilm-l4, 3 x minilm), Dirichlet 0.5, "
             f"{rounds} rounds, lr 0.003, 1 local epoch, seeds {','.join(map(str, seeds))}. "
             "DeMA: rank 8, 4 experts, alpha 16 on query/value; LoRA r=8 (hetlora: 4/8/16). "
             "Final accuracy of each family's global model on the server's test split, mean "
             "+- std over seeds.", "",
             "| row | " + " | ".join(FAMILIES) + " | mean over families | s a run |",
             "|---" * (len(FAMILIES) + 3) + "|"]
    for row in rows:
        lines.append(f"| {row} | " + " | ".join(mean_std(accuracy[row][f]) for f in FAMILIES)
                     + f" | {mean_std(means[row])} | "
                     f"{np.mean([c['seconds'] for c in done[row]]):.0f} |")
    if "fedavg-per-family" in rows:
        base = "fedavg-per-family"
        lines += ["", f"Against {base} (targets: +0.02 on the mean, +0.05 on minilm-l2, the "
                  "smallest family):", "", "| row | mean gain | minilm-l2 gain | targets met |",
                  "|---|---|---|---|"]
        for row in rows:
            if row.startswith("heterotune"):
                gain = means[row].mean() - means[base].mean()
                small = accuracy[row]["minilm-l2"].mean() - accuracy[base]["minilm-l2"].mean()
                met = "yes" if gain >= 0.02 and small >= 0.05 else "**no**"
                lines.append(f"| {row} | {gain:+.3f} | {small:+.3f} | {met} |")
    lines += ["", "Bytes per client per round (train down + up, mean over rounds, first seed) "
              "against full fine-tuning of the same backbone (all weights down and up, "
              "float32):", "", "| row | " + " | ".join(FAMILIES) + " |",
              "|---" * (len(FAMILIES) + 1) + "|"]
    for row in rows:
        sent = done[row][0]["bytes"]
        lines.append(f"| {row} | " + " | ".join(
            f"{sent[f]:,.0f} ({1 - sent[f] / (2 * full_bytes[f]):.2%} less)" for f in FAMILIES)
            + " |")
    lines.append("| full fine-tuning | " + " | ".join(f"{2 * full_bytes[f]:,}"
                                                      for f in FAMILIES) + " |")
    write_report("heterotune-agnews", "HeteroTune vs per-family FedAvg (AG News)",
                 f"python -m bench.heterotune agnews --seeds {','.join(map(str, seeds))} "
                 f"--rows {','.join(rows)} --rounds {rounds}", "\n".join(lines))


def probe(family: str, mode: str) -> None:
    """One client's training in this process; prints peak RSS before and after (MiB)."""
    import torch

    from pollen.data import load_task
    from pollen.models import build_backbone
    from pollen.training import make_loader, torch_dataset, train
    from strategies import build_model_for, run_config

    config = run_config({**COMMON, "strategy": "heterotune"})
    task = load_task(config)
    data = torch_dataset(task.pool.select(range(64)), "text", family, config.max_seq_len)
    if mode == "dema":
        model = build_model_for(config, family, task.num_classes)
    else:
        model = build_backbone(family, task.num_classes, config.seed)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    train(model, make_loader(data, 32, shuffle=True, seed=0), epochs=1, lr=0.003,
          device=torch.device("cpu"), seed=0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"before": before, "peak": peak, "trainable": trainable}))


def memory() -> None:
    lines = ["Peak resident memory (ru_maxrss) of one client's local training: 64 AG News "
             "examples, batch 32, sequence length 64, 1 epoch, AdamW, CPU; each cell a fresh "
             "process. 'training' = peak minus the peak before training started (model and "
             "data loaded).", "",
             "| backbone | DeMA trainable | DeMA peak MiB | DeMA training MiB | full trainable "
             "| full peak MiB | full training MiB | peak: DeMA / full |",
             "|---|---|---|---|---|---|---|---|"]
    for family in FAMILIES:
        measured = {}
        for mode in ("dema", "full"):
            out = subprocess.run([sys.executable, "-m", "bench.heterotune", "probe", family,
                                  mode], check=True, capture_output=True, text=True).stdout
            measured[mode] = json.loads(out.strip().splitlines()[-1])
        dema, full = measured["dema"], measured["full"]
        lines.append(
            f"| {family} | {dema['trainable']:,} | {dema['peak']:.0f} | "
            f"{dema['peak'] - dema['before']:.0f} | {full['trainable']:,} | {full['peak']:.0f} | "
            f"{full['peak'] - full['before']:.0f} | {dema['peak'] / full['peak']:.2f} |")
    write_report("heterotune-memory", "HeteroTune: client peak memory against full fine-tuning",
                 "python -m bench.heterotune memory", "\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("suite", choices=("agnews", "memory", "probe"))
    parser.add_argument("args", nargs="*")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--rows", default="heterotune,fedavg-per-family")
    args = parser.parse_args()
    if args.suite == "agnews":
        agnews(args.rounds, [int(s) for s in args.seeds.split(",")], args.rows.split(","))
    elif args.suite == "memory":
        memory()
    else:
        probe(*args.args)


if __name__ == "__main__":
    main()
