"""Why FedAvg becomes the majority-class predictor at two classes and Dirichlet 0.1 (#19).

    python -m bench.labelskew [--seeds 5,6,7] [--rounds 4] [--only NAME,...]
    python -m bench.labelskew probe
    python -m bench.labelskew sgd-lr
    python -m bench.labelskew grid [--rows default,sgd] [--seeds 0,1,2] [--tasks ...]
                                   [--alphas 0.1,0.3]

The held-out check's setting, on a two-class subset of AG News that keeps its class
ratio (57.6% majority): Business (all 1,900 test rows) against Sci/Tech (1,400 of
1,900, seeded), MiniLM + LoRA, 10 clients, Dirichlet 0.1 over the label, every client
trains 1 local epoch a round, 5% of the pool held by the server (unused by fedavg; kept
so that the clients' splits are the held-out check's). Every variant is FedAvg on the
same splits and seeds; they differ in the client recipe only (``VARIANTS``). Each cell
is tagged with the commit that ran it, so the report sets Pollen before and after a
change side by side: run the bench in a worktree of each commit with the same
``--cells`` file (one after the other: each run rewrites the file), then
``--report-only`` writes the report from every stored row. Reports the server-test accuracy and macro-F1 per round
(seed means) and the final mean +- std; a macro-F1 near 0.37 with accuracy 0.576 is the
majority-class predictor. Duration on 2 CPU cores: about 6 minutes a cell.

probe: MiniLM frozen, 800 texts of the subset: a logistic-regression probe (trained on
500, scored on 300, C = 0.01 and 1) on three readings of a text's features: the pooler
over [CLS] (what transformers' BertForSequenceClassification's head reads), the [CLS]
state, and the attention-masked mean (how all-MiniLM-L6-v2 was trained), with each
reading's spread (mean std per dimension). About 30 seconds.

sgd-lr: the plain-SGD lr of the small models' rows of ``pollen.catalog.SGD_LR`` (the
CNN on digits, a tiny BERT on a synthetic topics set), FedAvg over 4 IID clients at
0.01, 0.05, 0.1, 0.3 and 1 beside AdamW's recommendation. About 2 minutes.

grid (#36): the default recipe against its remedies where the skew is strong. MiniLM +
LoRA, 10 clients, 1 local epoch, 4 rounds, 5% server data, every key not named by a
row at its default, on two tasks of the project's own data (``binary``: the subset
above; ``4-class``: all of AG News's 7,600 test rows) at Dirichlet 0.1 and 0.3, over
seeds; a seed whose Dirichlet split cannot be drawn is replaced by the next drawable
one (``drawable_seeds``), and the report names the seeds it used. Rows are run-config
overrides (``GRID_ROWS``): ``default`` names no key, so it is "today's default" at the
commit that ran it; each cell is tagged with that commit. Remedies with no key are
screened as rows too (``bench.labelskew_screens.SCREENS``). Reports the final accuracy
and macro-F1 per cell (mean +- std and per seed), and the majority-class predictor's
accuracy and macro-F1 beside them. About 3 minutes a binary cell and 7 a 4-class one
on one thread.
"""

from __future__ import annotations

import argparse
import contextlib
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd

from bench.common import AG_NEWS, DOCS, RUNS, Cells, mean_std, run_in_process, write_report
from bench.labelskew_screens import SCREENS

MAJORITY, MINORITY = 3, 4  # AG News's Business and Sci/Tech
MINORITY_ROWS = 1400

SETTING = {"model": "minilm", "partitioner": "dirichlet", "dirichlet-alpha": 0.1,
           "local-epochs": 1, "server-data-fraction": 0.05, "strategy": "fedavg",
           "fraction-evaluate": 0.0}
VARIANTS = {
    "adamw 0.003": {"optimizer": "adamw", "lr": 0.003},  # the held-out check's recipe
    "sgd 0.05": {"optimizer": "sgd", "lr": 0.05},
}


GRID_ROWS = {
    "default": {},
    "sgd": {"optimizer": "sgd"},
    "calibrated": {"logit-calibration": 1.0},  # FedLC's tau = 1, with AdamW
    "calibrated-sgd": {"optimizer": "sgd", "logit-calibration": 1.0},
    "adamw-0.001": {"lr": 0.001},  # AdamW's smaller steps: a one-class client moves less
    # a one-class client's gradient vanishes once it predicts its class; AdamW's step
    # does not (its update is scale-free): momentum SGD keeps the first, and is fast
    "sgd-momentum": {"optimizer": "sgd", "momentum": 0.9, "lr": 0.01},
    # the same with larger steps: plain momentum SGD is still climbing at round 4
    "sgd-momentum-0.02": {"optimizer": "sgd", "momentum": 0.9, "lr": 0.02},
    "sgd-momentum-0.03": {"optimizer": "sgd", "momentum": 0.9, "lr": 0.03},
    "capped-8": {"max-steps": 8},  # AdamW, at most 8 local steps a round
    # inverse-frequency class weights: a client that is mostly one class learns the others
    "balanced": {"class-balanced-loss": True},
    "sgd-momentum-balanced": {"optimizer": "sgd", "momentum": 0.9, "lr": 0.01,
                              "class-balanced-loss": True},
    # the methods that hold labelled server data (item 3: guided >= central - 0.02)
    # FedBABU: the head stays at its initial values in local training; only the features
    # move, so a one-class client cannot drag the shared boundary towards its class
    "frozen-head": {"head-lr-scale": 0.0},
    "head-0.1": {"head-lr-scale": 0.1},  # the head at a tenth of AdamW's lr
    "central": {"strategy": "central"},
    "guided": {"strategy": "guided"},
    "guided-member": {"strategy": "guided", "guided.server-member": True},
}
GRID_SETTING = {"model": "minilm", "partitioner": "dirichlet", "local-epochs": 1,
                "server-data-fraction": 0.05, "fraction-evaluate": 0.0,
                "num-server-rounds": 4}
GRID_ALPHAS = (0.1, 0.3)


def four_class_csv(out: Path) -> Path:
    """label,text rows of all of AG News's test split (1,900 a class)."""
    frame = pd.read_csv(AG_NEWS, header=None, names=["label", "title", "body"])
    frame["text"] = frame["title"] + ". " + frame["body"]
    frame["label"] = frame["label"].map({1: "World", 2: "Sports", 3: "Business",
                                         4: "Sci/Tech"})
    out.parent.mkdir(parents=True, exist_ok=True)
    frame[["label", "text"]].to_csv(out, index=False)
    return out


GRID_TASKS = {"binary": lambda: two_class_csv(RUNS / "agnews-business-scitech.csv"),
              "4-class": lambda: four_class_csv(RUNS / "agnews-4class.csv")}


def drawable_seeds(keys: dict, wanted: int, first: int, num_clients: int = 10) -> list[int]:
    """The first ``wanted`` seeds from ``first`` on whose Dirichlet split flwr-datasets
    can draw (every client gets its minimum; ``pollen.data.client_split`` says so)."""
    from pollen.data import client_split, load_task
    from pollen.errors import ConfigError
    from strategies import run_config

    seeds, seed = [], first
    while len(seeds) < wanted:
        config = run_config({**keys, "seed": seed})
        try:
            client_split(load_task(config), config, 0, num_clients)
            seeds.append(seed)
        except ConfigError as error:
            print(f"seed {seed} skipped: {error}", flush=True)
        seed += 1
    return seeds


def majority_scores(labels: np.ndarray) -> tuple[float, float]:
    """Accuracy and macro-F1 of always predicting the most frequent label (F1 is
    2p/(1+p) for that class, 0 for the others, averaged over the classes present)."""
    counts = np.unique(labels, return_counts=True)[1]
    share = counts.max() / counts.sum()
    return float(share), float(2 * share / (1 + share) / len(counts))


def _unpatched(keys: dict, num_clients: int) -> contextlib.AbstractContextManager:
    return contextlib.nullcontext()


def grid(seeds_wanted: list[int], names: list[str], tasks: list[str], cells: Cells,
         out_dir: Path, report_only: bool = False,
         alphas: tuple[float, ...] = GRID_ALPHAS) -> Path:
    from pollen.data import load_task
    from strategies import run_config

    here = commit()
    lines = ["MiniLM + LoRA, 10 clients, Dirichlet over the label, 1 local epoch, 4 rounds, "
             "5% server data, every other key at its default; the server's test split. "
             "Rows name the recipe (its run-config overrides) and the commit that ran it. "
             "The majority-class predictor's scores are given per task.", ""]
    for task in tasks:
        dataset = str(GRID_TASKS[task]())
        for alpha in alphas:
            keys = {**GRID_SETTING, "dataset": dataset, "dirichlet-alpha": alpha}
            seeds = drawable_seeds(keys, len(seeds_wanted), seeds_wanted[0])
            cell = f"{task} a{alpha:g}"
            for seed in [] if report_only else seeds:
                for name in names:
                    def compute(name=name, seed=seed) -> dict:
                        overrides, patch = (SCREENS[name] if name in SCREENS
                                            else (GRID_ROWS[name], _unpatched))
                        cell_keys = {**keys, **overrides, "seed": seed}
                        with patch(cell_keys, 10):
                            _, rows, seconds = run_in_process(
                                cell_keys, 10,
                                f"labelskew-grid-{task}-a{alpha:g}-{name}-seed{seed}")
                        return {"accuracy": [r["eval_accuracy"] for r in rows],
                                "macro_f1": [r["eval_macro_f1"] for r in rows],
                                "seconds": seconds}
                    cells.get(seed, f"{cell}/{name}@{here}", compute)
            test_labels = np.array(load_task(run_config({**keys, "seed": seeds[0]}))
                                   .server_test["label"])
            majority = majority_scores(test_labels)
            lines += [f"### {task}, Dirichlet {alpha:g} (seeds {', '.join(map(str, seeds))}; "
                      f"majority class: accuracy {majority[0]:.3f}, macro-F1 "
                      f"{majority[1]:.3f})", "",
                      "| recipe @ commit | final accuracy | final macro-F1 | accuracy per "
                      "seed | macro-F1 per seed |", "|---|---|---|---|---|"]
            rows = sorted({key.split("/", 1)[1] for key in cells.done
                           if key.split("/", 1)[1].startswith(cell + "/")})
            for row in rows:
                done = cells.of(row, seeds)
                if not done:
                    continue
                ran = [s for s in seeds if f"{s}/{row}" in cells.done]
                # a screened row (not every seed) is listed with the seeds it ran
                only = ("" if len(ran) == len(seeds)
                        else f" (seed {', '.join(map(str, ran))} only)")
                accuracy = [c["accuracy"][-1] for c in done]
                f1 = [c["macro_f1"][-1] for c in done]
                lines.append(f"| {row.split('/', 1)[1]}{only} | {mean_std(accuracy)} | "
                             f"{mean_std(f1)} | {', '.join(f'{v:.3f}' for v in accuracy)} | "
                             f"{', '.join(f'{v:.3f}' for v in f1)} |")
            lines.append("")
    return write_report("labelskew-grid", "Default recipes under strong label skew (#36)",
                        f"python -m bench.labelskew grid --seeds "
                        f"{','.join(map(str, seeds_wanted))} --rows {','.join(names)}",
                        "\n".join(lines), out_dir)


def two_class_csv(out: Path) -> Path:
    """label,text rows: every Business row, 1,400 Sci/Tech rows (seed 0)."""
    frame = pd.read_csv(AG_NEWS, header=None, names=["label", "title", "body"])
    frame["text"] = frame["title"] + ". " + frame["body"]
    minority = frame[frame["label"] == MINORITY].sample(MINORITY_ROWS, random_state=0)
    subset = pd.concat([frame[frame["label"] == MAJORITY], minority]).sort_index()
    subset["label"] = subset["label"].map({MAJORITY: "Business", MINORITY: "Sci/Tech"})
    out.parent.mkdir(parents=True, exist_ok=True)
    subset[["label", "text"]].to_csv(out, index=False)
    return out


def commit() -> str:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True, cwd=Path(__file__).parent, check=True).stdout.strip()


def probe(out_dir: Path) -> Path:
    import torch
    from sklearn.linear_model import LogisticRegression
    from transformers import AutoModel, AutoTokenizer

    from pollen.models import minilm_dir

    frame = pd.read_csv(two_class_csv(RUNS / "agnews-business-scitech.csv")).sample(
        800, random_state=0)
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir())
    model = AutoModel.from_pretrained(minilm_dir()).eval()
    readings: dict[str, list] = {"pooler over [CLS]": [], "[CLS] state": [],
                                 "masked mean": []}
    with torch.no_grad():
        for start in range(0, len(frame), 32):
            batch = tokenizer(list(frame.text[start:start + 32]), truncation=True,
                              max_length=64, padding=True, return_tensors="pt")
            output = model(**batch)
            mask = batch["attention_mask"].unsqueeze(-1).float()
            readings["pooler over [CLS]"].append(output.pooler_output)
            readings["[CLS] state"].append(output.last_hidden_state[:, 0])
            readings["masked mean"].append((output.last_hidden_state * mask).sum(1) / mask.sum(1))
    labels = (frame.label.values == "Business").astype(int)
    lines = ["MiniLM (frozen), 800 texts of AG News Business vs Sci/Tech (57.6% Business); "
             "logistic regression trained on 500, accuracy on the other 300.", "",
             "| features | std per dimension | probe C = 0.01 | probe C = 1 |",
             "|---|---|---|---|"]
    for name, parts in readings.items():
        features = torch.cat(parts).numpy()
        scores = [LogisticRegression(C=c, max_iter=2000).fit(features[:500], labels[:500])
                  .score(features[500:], labels[500:]) for c in (0.01, 1.0)]
        lines.append(f"| {name} | {features.std(axis=0).mean():.3f} | {scores[0]:.3f} | "
                     f"{scores[1]:.3f} |")
    return write_report("labelskew-probe", "MiniLM's features as a classifier head reads them",
                        "python -m bench.labelskew probe", "\n".join(lines), out_dir)


SGD_PROBE_LRS = (0.01, 0.05, 0.1, 0.3, 1.0)


def sgd_lr(out_dir: Path) -> Path:
    """Which plain-SGD lr each small model's row of ``pollen.catalog.SGD_LR`` takes:
    FedAvg over 4 IID clients, 3 rounds of 1 local epoch, seed 0, at each lr of
    ``SGD_PROBE_LRS`` and at the model's AdamW recommendation for reference."""
    from tests.deployment import write_topics

    topics = write_topics(RUNS / "sgd-lr-topics.csv", 800,
                          ["sport", "money", "space", "music"], 1)
    settings = {"cnn": {"model": "cnn", "dataset": "digits"},
                "tiny-bert": {"model": "tiny-bert", "dataset": str(topics),
                              "max-seq-len": 16}}
    lines = ["FedAvg, 4 IID clients, 3 rounds of 1 local epoch, seed 0; final accuracy on "
             "the server's test split.", "",
             "| model | adamw (auto) | " + " | ".join(f"sgd {lr:g}" for lr in SGD_PROBE_LRS)
             + " |", "|---|---|" + "---|" * len(SGD_PROBE_LRS)]
    for model, keys in settings.items():
        common = {**keys, "partitioner": "iid", "num-server-rounds": 3, "local-epochs": 1,
                  "fraction-evaluate": 0.0, "seed": 0}
        recipes = [{}] + [{"optimizer": "sgd", "lr": lr} for lr in SGD_PROBE_LRS]
        scores = [run_in_process({**common, **recipe}, 4, f"sgd-lr-{model}")[1][-1]
                  ["eval_accuracy"] for recipe in recipes]
        lines.append(f"| {model} | " + " | ".join(f"{s:.3f}" for s in scores) + " |")
    return write_report("labelskew-sgd-lr", "Plain SGD's lr for the small models",
                        "python -m bench.labelskew sgd-lr", "\n".join(lines), out_dir)


def federated(seeds: list[int], rounds: int, names: list[str], cells: Cells,
              out_dir: Path, report_only: bool = False) -> Path:
    dataset = two_class_csv(RUNS / "agnews-business-scitech.csv")
    here = commit()
    for seed in [] if report_only else seeds:
        for name in names:
            def compute(name=name, seed=seed) -> dict:
                _, rows, _ = run_in_process(
                    {**SETTING, **VARIANTS[name], "dataset": str(dataset), "seed": seed,
                     "num-server-rounds": rounds}, 10,
                    f"labelskew-{name.replace(' ', '-')}-seed{seed}")
                return {"accuracy": [r["eval_accuracy"] for r in rows],
                        "macro_f1": [r["eval_macro_f1"] for r in rows]}
            cells.get(seed, f"{name}@{here}", compute)
    lines = [f"FedAvg, MiniLM + LoRA, AG News Business vs Sci/Tech (57.6% Business), 10 "
             f"clients, Dirichlet 0.1, 1 local epoch, {rounds} rounds, seeds "
             f"{', '.join(map(str, seeds))}; the server's test split (mean +- std over the "
             "seeds; per round: seed means). Rows name the client recipe and the commit "
             "that ran it.", "",
             "| recipe @ commit | final accuracy | final macro-F1 | accuracy per round | "
             "macro-F1 per round |", "|---|---|---|---|---|"]
    rows = sorted({key.split("/", 1)[1] for key in cells.done})
    for row in rows:
        done = cells.of(row, seeds)
        if len(done) < len(seeds):
            continue
        accuracy = np.array([c["accuracy"] for c in done])
        f1 = np.array([c["macro_f1"] for c in done])
        lines.append(f"| {row} | {mean_std(accuracy[:, -1])} | {mean_std(f1[:, -1])} | "
                     + ", ".join(f"{v:.3f}" for v in accuracy.mean(axis=0)) + " | "
                     + ", ".join(f"{v:.3f}" for v in f1.mean(axis=0)) + " |")
    return write_report("labelskew", "FedAvg under two-class label skew",
                        f"python -m bench.labelskew --seeds {','.join(map(str, seeds))} "
                        f"--rounds {rounds}", "\n".join(lines), out_dir)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("suite", nargs="?", default="federated",
                        choices=("federated", "probe", "grid", "sgd-lr"))
    parser.add_argument("--seeds", default=None, help="default 5,6,7 (grid: 0,1,2)")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--only", default=",".join(VARIANTS))
    parser.add_argument("--rows", default=",".join(GRID_ROWS),
                        help=f"grid: the recipes ({', '.join([*GRID_ROWS, *SCREENS])})")
    parser.add_argument("--tasks", default=",".join(GRID_TASKS), help="grid: the tasks")
    parser.add_argument("--alphas", default=",".join(map(str, GRID_ALPHAS)),
                        help="grid: the Dirichlet alphas")
    parser.add_argument("--cells", type=Path, default=None,
                        help="the cells file (default pollen-runs/bench/labelskew-cells-"
                             "r<rounds>.json)")
    parser.add_argument("--report-only", action="store_true",
                        help="write the report from the stored cells, run nothing")
    parser.add_argument("--out", type=Path, default=DOCS)
    args = parser.parse_args()
    if args.suite == "probe":
        probe(args.out)
        return
    if args.suite == "sgd-lr":
        sgd_lr(args.out)
        return
    if args.suite == "grid":
        grid([int(s) for s in (args.seeds or "0,1,2").split(",")], args.rows.split(","),
             args.tasks.split(","), Cells(args.cells or DOCS / "labelskew-grid-cells.json"),
             args.out, args.report_only, tuple(float(a) for a in args.alphas.split(",")))
        return
    cells = Cells(args.cells or RUNS / f"labelskew-cells-r{args.rounds}.json")
    federated([int(s) for s in (args.seeds or "5,6,7").split(",")], args.rounds, args.only.split(","),
              cells, args.out, args.report_only)


if __name__ == "__main__":
    main()
