"""HeteroTune against per-family FedAvg and HetLoRA, and its cost against full fine-tuning.

    python -m bench.heterotune agnews [--rounds 5]
    python -m bench.heterotune memory

agnews: AG News test.csv, 9 clients (round-robin: 3 each of minilm-l2, minilm-l4 and
minilm), Dirichlet 0.5, lr 0.003, 1 local epoch, seed 42, the same splits and rounds for
heterotune (CMGA on), heterotune (CMGA off), fedavg-per-family (LoRA r=8) and hetlora
(LoRA ranks 4 / 8 / 16 by depth). Reports each family's global accuracy on the server's
test split and their mean, and the bytes a client sends and receives per round against
full fine-tuning of its backbone (every weight down and up). About 25 minutes for 5
rounds.

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

from bench.common import AG_NEWS, simulate, write_report

FAMILIES = ("minilm-l2", "minilm-l4", "minilm")
COMMON = {"dataset": str(AG_NEWS), "model": "minilm", "model-families": ",".join(FAMILIES),
          "lr": 0.003, "local-epochs": 1, "partitioner": "dirichlet", "dirichlet-alpha": 0.5,
          "seed": 42}
ROWS = [("heterotune (CMGA on)", {"strategy": "heterotune", "heterotune.cmga": True}),
        ("heterotune (CMGA off)", {"strategy": "heterotune", "heterotune.cmga": False}),
        ("fedavg-per-family", {"strategy": "fedavg-per-family"}),
        ("hetlora", {"strategy": "hetlora", "hetlora.ranks": "4,8,16"})]


def agnews(rounds: int) -> None:
    from pollen.models import build_backbone

    full_bytes = {f: 4 * sum(p.numel() for p in build_backbone(f, 4, 42).parameters())
                  for f in FAMILIES}
    results = {}
    for label, overrides in ROWS:
        _, rows, seconds = simulate({**COMMON, **overrides, "num-server-rounds": rounds}, 9,
                                    "heterotune-" + label.split()[0] + (
                                        "-off" if "off" in label else ""))
        results[label] = (rows, seconds)
    lines = [f"AG News, 9 clients (3 x minilm-l2, 3 x minilm-l4, 3 x minilm), Dirichlet 0.5, "
             f"{rounds} rounds, lr 0.003, 1 local epoch, seed 42. DeMA: rank 8, 4 experts, 2 "
             "banks on query/value; LoRA r=8 (hetlora: 4/8/16). Accuracy of each family's "
             "global model on the server's test split after the last round.", "",
             "| strategy | " + " | ".join(FAMILIES) + " | mean | mean acc per round | wall s |",
             "|---" * (len(FAMILIES) + 4) + "|"]
    for label, (rows, seconds) in results.items():
        last = rows[-1]["family_accuracy"]
        lines.append(f"| {label} | " + " | ".join(f"{last[f]:.4f}" for f in FAMILIES)
                     + f" | {rows[-1]['eval_accuracy']:.4f} | "
                     + ", ".join(f"{r['eval_accuracy']:.4f}" for r in rows)
                     + f" | {seconds:.0f} |")
    lines += ["", "Bytes per client per round (train down + up, mean over rounds) against "
              "full fine-tuning of the same backbone (all weights down and up, float32):", "",
              "| strategy | " + " | ".join(FAMILIES) + " |", "|---" * (len(FAMILIES) + 1) + "|"]
    for label, (rows, _) in results.items():
        cells = []
        for family in FAMILIES:
            per_round = [r["family_bytes_down_per_client"][family]
                         + r["family_bytes_up_per_client"][family] for r in rows
                         if family in r["family_bytes_up_per_client"]]
            mean = sum(per_round) / len(per_round)
            cells.append(f"{mean:,.0f} ({1 - mean / (2 * full_bytes[family]):.2%} less)")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append("| full fine-tuning | " + " | ".join(f"{2 * full_bytes[f]:,}"
                                                      for f in FAMILIES) + " |")
    write_report("heterotune-agnews", "HeteroTune vs per-family FedAvg vs HetLoRA (AG News)",
                 f"python -m bench.heterotune agnews --rounds {rounds}", "\n".join(lines))


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
    args = parser.parse_args()
    if args.suite == "agnews":
        agnews(args.rounds)
    elif args.suite == "memory":
        memory()
    else:
        probe(*args.args)


if __name__ == "__main__":
    main()
