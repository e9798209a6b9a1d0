"""HeteroTune against per-family FedAvg and HetLoRA, and its cost against full fine-tuning.

    python -m bench.heterotune agnews [--seeds 0,1,2] [--rows heterotune,fedavg-per-family]
                                      [--rounds 5]
    python -m bench.heterotune memory [FAMILY ...]
    python -m bench.heterotune fleets [--seeds 0,1,2] [--rows ...] [--fleets ...] [--quick]
                                      [--report-only]

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

fleets (#34): an encoder and a decoder LM on one task, in uneven fleets. AG News, 10
clients, Dirichlet 0.5 over the label, two fleets: 8 MiniLM + 2 SmolLM2 and 2 MiniLM + 8
SmolLM2 (``family-assignment``: the first clients MiniLM), SmolLM2 classifying with a class
head on its last token. 3 rounds of 10 steps (batch 8, 32 tokens, AdamW lr 0.003),
every client trains every round. Rows (``FLEET_ROWS``): heterotune (with its family gate,
the default; the report counts the rounds each family kept its own step);
heterotune-ungated (``heterotune.family-gate = false``); fedavg-per-family
(each family alone); hetlora (ranks 8 and 8: across architectures no LoRA tensor has a
namesake in the other family, so it is per-family FedAvg, listed because the issue asks
for it); local (each client alone for the same 30 steps, scored on the server's test
split, the mean per family); all-smollm2 (the upper reference: all 10 clients on SmolLM2
with FedAvg, reported in the SmolLM2 column). Each family's final accuracy on the server's
test split, mean +- std over seeds and the per-seed gap to fedavg-per-family. Cells are
kept in ``docs/benchmarks/heterotune-fleets-cells.json`` (committed: a run resumes from
them, across sessions). --quick: tiny-bert and
tiny-llama on a synthetic topics set, 4 clients, 1 round, seed 0 (a smoke run of the
code path, under 2 minutes). A full cell takes about 10-20 minutes on one thread.

memory: one client's training step at the fleets' recipe (batch 8, 32 tokens), DeMA
against full fine-tuning (every weight trainable), in MiB by what the bytes hold
(``bench/memory.py``: a process's resident peak is dominated by the runtime and cannot
be reset between cells). FAMILY ...: the backbones (default the MiniLM depths; ``minilm
smollm2`` for #34's claim of about -50%). About a minute.
"""

from __future__ import annotations

import argparse
import functools

import numpy as np

from bench.common import AG_NEWS, DOCS, RUNS, Cells, mean_std, run_in_process, write_report

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


FLEET_COMMON = {"dataset": str(AG_NEWS), "model": "minilm", "partitioner": "dirichlet",
                "dirichlet-alpha": 0.5, "num-server-rounds": 3, "max-steps": 10,
                "batch-size": 8, "max-seq-len": 32, "lr": 0.003, "fraction-evaluate": 0.0,
                "server-test-fraction": 0.05}
FLEETS = {"8 minilm + 2 smollm2": {"minilm": 8, "smollm2": 2},
          "2 minilm + 8 smollm2": {"minilm": 2, "smollm2": 8}}
FLEET_ROWS = {"heterotune": {"strategy": "heterotune"},  # with its family gate (default)
              "heterotune-ungated": {"strategy": "heterotune", "heterotune.family-gate": False},
              "fedavg-per-family": {"strategy": "fedavg-per-family"},
              "hetlora": {"strategy": "hetlora", "hetlora.ranks": "8,8"},
              "local": {"strategy": "fedavg-per-family"},  # its recipe, no federation
              "all-smollm2": {"strategy": "fedavg", "model": "smollm2"}}


def fleet_keys(sizes: dict[str, int], quick: bool) -> dict:
    """The run config of a fleet: ``model-families`` in fleet order, the first clients on
    the first family (``family-assignment``)."""
    assignment, client = [], 0
    for family, count in sizes.items():
        assignment += [f"{client + i}:{family}" for i in range(count)]
        client += count
    keys = {**FLEET_COMMON, "model-families": ",".join(sizes),
            "family-assignment": ",".join(assignment), "model": next(iter(sizes))}
    if quick:
        from tests.deployment import write_topics

        topics = write_topics(RUNS / "fleets-topics.csv", 400,
                              ["sport", "money", "space", "music"], 1)
        keys.update({"dataset": str(topics), "num-server-rounds": 1, "max-steps": 5,
                     "max-seq-len": 16, "server-test-fraction": 0.2, "lr": 0.05})
    return keys


def _local_accuracy(keys: dict, num_clients: int) -> dict[str, float]:
    """Each client alone from the base for rounds x steps steps (its family's model as
    fedavg-per-family builds it), scored on the server's test split; the mean per family."""
    import torch

    from client_app.job import client_data
    from pollen.adapters import travelling_state
    from pollen.families import family_of
    from pollen.training import make_loader, train
    from server_app.app import ServerEvaluator
    from strategies import build_model_for, run_config

    config = run_config(keys)
    evaluator = ServerEvaluator(config)
    scores: dict[str, list[float]] = {}
    for client in range(num_clients):
        family = family_of(config, str(client))
        data = client_data(config, (client, num_clients), None, (), family)
        model = build_model_for(config, family, data.num_classes)
        seed = config.seed + client
        train(model, make_loader(data.train, config.batch_size, True, seed), epochs=1,
              lr=config.lr, device=torch.device("cpu"), seed=seed,
              max_steps=config.num_server_rounds * config.max_steps,
              optimizer=config.local_optimizer)
        scores.setdefault(family, []).append(
            evaluator.evaluate_family(family, travelling_state(model)).accuracy)
    return {family: float(np.mean(values)) for family, values in scores.items()}


def _fleet_cell(fleet: str, row: str, seed: int, quick: bool) -> dict:
    sizes = FLEETS[fleet] if not quick else QUICK_FLEETS[fleet]
    keys = {**fleet_keys(sizes, quick), **FLEET_ROWS[row], "seed": seed}
    num_clients = sum(sizes.values())
    if row == "local":
        return {"family_accuracy": _local_accuracy(keys, num_clients)}
    if row == "all-smollm2":
        from pollen.catalog import is_decoder

        decoder = next(f for f in sizes if is_decoder(f))
        for key in ("model-families", "family-assignment"):
            keys.pop(key)
        keys["model"] = decoder
        _, rows, seconds = run_in_process(keys, num_clients, f"fleets-{row}-seed{seed}")
        return {"family_accuracy": {decoder: rows[-1]["eval_accuracy"]}, "seconds": seconds}
    _, rows, seconds = run_in_process(keys, num_clients,
                                      f"fleets-{fleet.replace(' ', '')}-{row}-seed{seed}")
    return {"family_accuracy": rows[-1]["family_accuracy"], "seconds": seconds,
            "curve": [r["family_accuracy"] for r in rows],
            "gates": [r.get("family_gate") for r in rows],
            "bytes": {f: rows[-1]["family_bytes_up_per_client"][f]
                      + rows[-1]["family_bytes_down_per_client"][f]
                      for f in rows[-1]["family_bytes_up_per_client"]}}


@functools.cache
def full_bytes(family: str) -> int:
    """float32 bytes of every weight of the family's classifier (4 classes)."""
    from pollen.models import build_backbone

    return 4 * sum(p.numel() for p in build_backbone(family, 4, 42).parameters())


QUICK_FLEETS = {"8 minilm + 2 smollm2": {"tiny-bert": 3, "tiny-llama": 1},
                "2 minilm + 8 smollm2": {"tiny-bert": 1, "tiny-llama": 3}}


def fleets(seeds: list[int], rows: list[str], names: list[str], quick: bool,
           report_only: bool = False) -> None:
    """Runs the missing cells (none with ``report_only``), then reports each fleet over
    the seeds at which every row has its cell."""
    cells = Cells(RUNS / "heterotune-fleets-quick-cells.json" if quick
                  else DOCS / "heterotune-fleets-cells.json")
    lines = ["AG News, 10 clients, Dirichlet 0.5, 3 rounds of 10 steps (batch 8, 32 tokens, "
             "AdamW lr 0.003); SmolLM2 classifies with a class head on its last token. Final "
             "accuracy of each family's model on the server's test split (5% of AG News), "
             "mean +- std over the seeds named; gap: the row minus fedavg-per-family at each "
             "seed (same split)." if not quick else
             "--quick: tiny-bert and tiny-llama on a synthetic topics set, a smoke run.", ""]
    for fleet in names:
        sizes = FLEETS[fleet] if not quick else QUICK_FLEETS[fleet]
        families = list(sizes)

        def key(row: str, fleet=fleet) -> str:  # all-smollm2: one federation for both
            return row if row == "all-smollm2" else f"{fleet}/{row}"

        # every row of a seed runs before the next seed, so a partial run compares like
        # with like
        for seed in [] if report_only else seeds:
            for row in rows:
                cells.get(seed, key(row),
                          lambda row=row, seed=seed: _fleet_cell(fleet, row, seed, quick))
        # a row with no cell in this fleet (not run for it) is named, not reported
        not_run = [row for row in rows
                   if not any(f"{s}/{key(row)}" in cells.done for s in seeds)]
        rows_run = [row for row in rows if row not in not_run]
        ran = [s for s in seeds if all(f"{s}/{key(row)}" in cells.done for row in rows_run)]
        if not ran or not rows_run:
            lines += [f"### {fleet}", "", "No seed has every row's cell yet.", ""]
            continue
        done = {row: cells.of(key(row), ran) for row in rows_run}
        lines += [f"### {fleet}, seeds {', '.join(map(str, ran))}"
                  + (f" (quick: {sizes})" if quick else ""), "",
                  "| row | " + " | ".join(f"{f} | gap per seed" for f in families) + " |",
                  "|---|" + "---|---|" * len(families)]
        base = done.get("fedavg-per-family")
        for row in rows_run:
            parts = []
            for family in families:
                values = [c["family_accuracy"].get(family) for c in done[row]]
                if any(v is None for v in values):
                    parts += ["", ""]
                    continue
                gaps = ("" if base is None else ", ".join(
                    f"{v - b['family_accuracy'][family]:+.3f}" for v, b in zip(values, base)))
                parts += [mean_std(values), gaps]
            lines.append(f"| {row} | " + " | ".join(parts) + " |")
        for row in rows_run:
            gates = [g for c in done[row] for g in c.get("gates") or [] if g]
            if gates:
                lines.append(f"\n{row}: rounds in which a family kept its own step (family "
                             "gate), over all seeds: " + ", ".join(
                                 f"{f} {sum(g.get(f) == 'own' for g in gates)} of "
                                 f"{sum(f in g for g in gates)}" for f in families))
        lines += ["", "Bytes a client sends and receives in the last round (train, float32) "
                  "against full fine-tuning of its backbone (every weight down and up), first "
                  "seed:", "", "| row | " + " | ".join(families) + " |",
                  "|---|" + "---|" * len(families)]
        for row in rows_run:
            sent = done[row][0].get("bytes") if done[row] else None
            if sent:
                lines.append(f"| {row} | " + " | ".join(
                    f"{sent[f]:,.0f} ({1 - sent[f] / (2 * full_bytes(f)):.2%} less)"
                    if f in sent else "" for f in families) + " |")
        if not_run:
            lines += ["", f"Rows not run for this fleet: {', '.join(not_run)}."]
        lines.append("")
    write_report("heterotune-fleets" + ("-quick" if quick else ""),
                 "HeteroTune across an encoder and a decoder, in uneven fleets (#34)",
                 f"python -m bench.heterotune fleets --seeds {','.join(map(str, seeds))} "
                 f"--rows {','.join(rows)}" + (" --quick" if quick else ""), "\n".join(lines))


def memory(families: tuple[str, ...]) -> None:
    """DeMA against full fine-tuning, one training step each (``bench.memory``)."""
    import torch

    from bench.memory import step_memory
    from pollen.data import load_task
    from pollen.models import build_backbone
    from pollen.training import batch_loss, make_loader, torch_dataset
    from strategies import build_model_for, run_config

    cpu = torch.device("cpu")
    batch_size, length = FLEET_COMMON["batch-size"], FLEET_COMMON["max-seq-len"]
    lines = [f"One local training step (forward, backward, AdamW) on {batch_size} AG News "
             f"examples of {length} tokens, the fleets' recipe, float32, CPU: MiB at the "
             "step's peak by what the bytes hold (torch's memory profiler, "
             "``bench/memory.py``). 'training state' is the peak minus the weights (what "
             "training adds to holding the model). SmolLM2 is the decoder classifier of the "
             "fleets (class head on its last token).", "",
             "| backbone | adapter | trainable | weights | gradients | optimizer | "
             "activations | peak total | training state |", "|---|---|---|---|---|---|---|---|---|"]
    ratios = []
    for family in families:
        config = run_config({**FLEET_COMMON, "strategy": "heterotune", "model": family,
                             "model-families": family, "max-seq-len": length})
        task = load_task(config)
        data = torch_dataset(task.pool.select(range(batch_size)), "text", family, length)
        batch = next(iter(make_loader(data, batch_size, shuffle=False, seed=0)))

        def step(model, optimizer):
            batch_loss(model, batch, cpu).backward()
            optimizer.step()

        measured = {}
        for adapter, model in (("dema", build_model_for(config, family, task.num_classes)),
                               ("full", build_backbone(family, task.num_classes, config.seed))):
            measured[adapter] = m = step_memory(model, step)
            lines.append(f"| {family} | {adapter} | {m.trainable:,} | {m.weights:.0f} | "
                         f"{m.gradients:.1f} | {m.optimizer:.1f} | {m.activations:.0f} | "
                         f"{m.total:.0f} | {m.training_state:.0f} |")
            print(lines[-1], flush=True)
        ratios.append(f"| {family} | {measured['dema'].total / measured['full'].total:.2f} | "
                      f"{measured['dema'].training_state / measured['full'].training_state:.2f} |")
    lines += ["", "| backbone | peak total: DeMA / full | training state: DeMA / full |",
              "|---|---|---|", *ratios]
    write_report("heterotune-memory", "HeteroTune: client training memory against full "
                 "fine-tuning", f"python -m bench.heterotune memory {' '.join(families)}",
                 "\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("suite", choices=("agnews", "memory", "fleets"))
    parser.add_argument("args", nargs="*")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--rows", default=None,
                        help="agnews: default heterotune,fedavg-per-family; fleets: all")
    parser.add_argument("--fleets", default=",".join(FLEETS))
    parser.add_argument("--quick", action="store_true", help="fleets: a smoke run")
    parser.add_argument("--report-only", action="store_true",
                        help="fleets: write the report from the stored cells, run nothing")
    args = parser.parse_args()
    if args.suite == "fleets":
        fleets([0] if args.quick else [int(s) for s in args.seeds.split(",")],
               (args.rows or ",".join(FLEET_ROWS)).split(","), args.fleets.split(","),
               args.quick, args.report_only)
    elif args.suite == "agnews":
        agnews(args.rounds, [int(s) for s in args.seeds.split(",")],
               (args.rows or "heterotune,fedavg-per-family").split(","))
    else:
        memory(tuple(args.args) or FAMILIES)


if __name__ == "__main__":
    main()
