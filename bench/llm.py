"""Instruction tuning of SmolLM2-135M-Instruct (#17).

    python -m bench.llm federated [--quick] [--seeds 0,1,2] [--rounds 5] [--steps 10]
                                  [--runs fedavg,guided]
    python -m bench.llm memory [--quick]
    python -m bench.llm gguf-cache
    python -m bench.llm depth-layouts
    python -m bench.llm cost [--quick] [--part all|loops|rounds] [--seeds 0,1,2]
                             [--runs fedavg,guided,fedavg-int8]
                             (bench.llm_cost: the loops; bench.llm_rounds: the rounds)

gguf-cache: seconds to load SmolLM2's model and tokenizer from its GGUF file and from the
node cache's transformers copy (pollen.nodecache), the first use's conversion, and the
copy's size on disk; in a fresh cache folder.

federated: AG News as classification as generation (the prompt lists World, Sports,
Business, Sci/Tech; the response is one of them), 10 clients, Dirichlet 0.5 over the
label, 3 clients a round, each ``--steps`` AdamW steps of 8 prompts a round (max-seq-len
160), ``--rounds`` rounds; the server holds 2% of the pool (every row, so that every
row's clients hold the same examples) and tests on another 2% (149 prompts: greedy
answers of at most 4 tokens, exact match and macro-F1, and the response loss). Rows, on
the same splits and seeds:
- zero-shot: the base model (LoRA's B = 0);
- local: 3 clients (partitions 0-2), each alone for rounds x steps steps from the base,
  the mean of their three models' scores on the server's test split;
- central: the server's 2% alone, ``central``'s training each round;
- fedavg, fedprox, fedmerge, guided;
- heterotune and fedavg-per-family across the depth families smollm2-l10, -l20 and
  smollm2 (the score: the mean over the families).
Each run answers its clients in turn in one process (``bench.common.run_in_process``): one
model load instead of one per Ray worker. Reports the mean +- std over the seeds of the
final exact match and response loss, per-round exact match (seed mean), MiB sent per
client per round and in the whole run, seconds per round, and training tokens per second
(steps x 8 prompts x the pool's mean real tokens, over the clients' training seconds;
the MiB up are a training client's reply, the whole run's MiB every message's tensors),
and each row's place against FedAvg (HeteroTune's against per-family FedAvg): a win or a
loss only when the gap of the mean exact matches exceeds the larger std.
Clients do not evaluate (fraction-evaluate 0): the rows are scored by the server, and
the clients' evaluation would add some 70 s a round. FedMerge's claim is personalised,
so after the fedavg and fedmerge runs the bench scores their saved final adapters on
every client's local test split (``on_clients``: FedAvg's global model, each client's
own FedMerge merge): some 360 prompts, the work of about 2.4 server evaluations. --quick:
the tiny random Llama (families tiny-llama-l1 and tiny-llama), 4 clients, 2 rounds of 2
steps, one seed.

Duration on 2 CPU cores: one fedavg round of SmolLM2 took 322 s with client evaluation
(training 161 s, the clients' evaluation 73 s, the server's 88 s); so some 4 minutes a
round without, about 2.7 hours a seed at the defaults (5 rounds: the issue's "about 10"
would be 5 hours a seed). Guided's rounds were three times longer in the cells of
llm-cells-r5-s10.json: its coefficient search (20 Adam steps of 32 server prompts
through SmolLM2, guided's defaults then) took 642-905 s a round on one thread, against
204-456 s for the three clients' training, and a guided cell's process peaked at 12.7
GiB RSS (sampled with ps). Since #37 an LLM's search is 8 steps of 8 prompts
(``SEARCH_BUDGET``); ``python -m bench.llm cost --part rounds`` measures it. Each
(seed, row) cell is kept as it ends and a rerun resumes, so the bench can run in parts; a
cell killed mid-run resumes from its last round's checkpoint (``run_in_process``), to the
same rows (checked on --quick's guided cell, killed after round 1).
--quick: 11 minutes (measured while another benchmark ran).

depth-layouts: is a layer-dropped SmolLM2 a working model before training? Zero-shot
exact match and response loss on the federated suite's server test split (seed 0) of
SmolLM2 keeping 10 or 20 of its 30 decoder layers (embeddings, final norm and head kept):
the first N (Pollen's smollm2-lN families), the first and last N/2, and the first 2 and
last 2 with the middle ones evenly spaced (offsite-tuning's uniform layer drop), beside
all 30. 17 minutes on one thread beside two other benchmarks.

memory: one training step (forward, backward, AdamW) of SmolLM2 on 8 AG News prompts of
128 tokens (classification as generation), counted by what each byte holds
(``bench.memory``): LoRA (r = 8 on q/k/v/o, Pollen's default), DeMA (HeteroTune's
adapter: rank 8, 4 experts, 2 banks on q/k/v/o) and full fine-tuning, each with and
without gradient checkpointing. HeteroTune's "~50% less peak memory" compares DeMA with
full fine-tuning. --quick: the tiny random Llama. Expected duration on 2 CPU cores:
about 6 minutes (--quick 1).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench.common import (AG_NEWS, DOCS, Cells, gap_and_larger_std, mean_std, place,
                          run_in_process, write_report)
from bench.memory import StepMemory, step_memory
from pollen.catalog import DECODER_TARGETS

TARGETS = tuple(DECODER_TARGETS.split(","))
ADAPTERS = ("lora", "dema", "full")
SEQUENCE, BATCH = 128, 8


def _config(model_name: str, checkpointing: bool):
    from strategies import run_config

    return run_config({"task": "instruct", "model": model_name, "dataset": str(AG_NEWS),
                       "class-names": "World,Sports,Business,Sci/Tech",
                       "max-seq-len": SEQUENCE, "partitioner": "iid",
                       "gradient-checkpointing": checkpointing})


def _batch(config) -> dict[str, torch.Tensor]:
    from pollen.data import load_task
    from pollen.training import make_loader, torch_dataset

    pairs = load_task(config).pool.select(range(4 * BATCH))
    tokens = torch_dataset(pairs, "instruct", config.model, config.max_seq_len)
    return next(iter(make_loader(tokens, BATCH, shuffle=False, seed=0)))


def _model(adapter: str, config) -> torch.nn.Module:
    from pollen.dema import inject_dema
    from pollen.dema.config import DemaConfig
    from pollen.models import build_backbone, build_model, prepare_for_training

    if adapter == "lora":
        return build_model(config, 0)
    backbone = prepare_for_training(build_backbone(config.model, 0, config.seed, config.task),
                                    config)
    if adapter == "dema":
        return inject_dema(backbone, DemaConfig(8, 4, 2, TARGETS, config.seed), config.model)
    for parameter in backbone.parameters():
        parameter.requires_grad = True
    return backbone


def memory(quick: bool, out_dir: Path) -> Path:
    from pollen.training import batch_loss

    model_name = "tiny-llama" if quick else "smollm2"
    cpu = torch.device("cpu")
    measured: dict[tuple[str, bool], StepMemory] = {}
    for checkpointing in (False, True):
        config = _config(model_name, checkpointing)
        batch = _batch(config)

        def step(model, optimizer):
            batch_loss(model, batch, cpu).backward()
            optimizer.step()

        for adapter in ADAPTERS:
            measured[adapter, checkpointing] = step_memory(_model(adapter, config), step)
            print(f"{adapter} checkpointing={checkpointing}: "
                  f"{measured[adapter, checkpointing]}", flush=True)
    tokens = int(batch["attention_mask"].sum())
    lines = [f"{model_name}, one step on {BATCH} AG News prompts padded to {SEQUENCE} tokens "
             f"({tokens} real tokens), float32, AdamW, CPU. MiB at the step's peak, by what "
             "the bytes hold (torch's memory profiler, checked against the tensors' own "
             "counts); 'activations' includes the backward's temporaries. 'step s' is the "
             "same step unprofiled (one step: a rough figure).", "",
             "| adapter | gradient checkpointing | trainable | weights | gradients | "
             "optimizer | activations | peak total | training state | step s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for (adapter, checkpointing), m in measured.items():
        lines.append(f"| {adapter} | {'yes' if checkpointing else 'no'} | {m.trainable:,} | "
                     f"{m.weights:.0f} | {m.gradients:.1f} | {m.optimizer:.1f} | "
                     f"{m.activations:.0f} | {m.total:.0f} | {m.training_state:.0f} | "
                     f"{m.seconds:.2f} |")
    lines += ["", "| ratio | no checkpointing | checkpointing |", "|---|---|---|"]
    for adapter in ("lora", "dema"):
        for what in ("total", "training_state"):
            ratios = [getattr(measured[adapter, c], what) / getattr(measured["full", c], what)
                      for c in (False, True)]
            lines.append(f"| {adapter} / full, {what.replace('_', ' ')} | {ratios[0]:.2f} | "
                         f"{ratios[1]:.2f} |")
    for adapter in ADAPTERS:
        off, on = measured[adapter, False], measured[adapter, True]
        lines.append(f"| {adapter}: checkpointing / none, activations (step time) | "
                     f"{on.activations / off.activations:.2f} | "
                     f"({on.seconds / off.seconds:.2f}) |")
    name = "llm-memory-quick" if quick else "llm-memory"
    return write_report(name, "LLM training memory: LoRA, DeMA and full fine-tuning",
                        f"python -m bench.llm memory{' --quick' if quick else ''}",
                        "\n".join(lines), out_dir)


CLASS_NAMES = "World,Sports,Business,Sci/Tech"
FEDERATION = {"task": "instruct", "dataset": str(AG_NEWS), "class-names": CLASS_NAMES,
              "max-seq-len": 160, "partitioner": "dirichlet", "dirichlet-alpha": 0.5,
              "fraction-train": 0.3, "fraction-evaluate": 0.0, "batch-size": 8,
              "server-test-fraction": 0.02, "local-test-fraction": 0.05,
              "server-data-fraction": 0.02, "max-new-tokens": 4}
FEDERATED = ("fedavg", "fedprox", "fedmerge", "guided", "central")
FAMILY_RUNS = ("heterotune", "fedavg-per-family")
# FedMerge's claim is personalised: each client's own merge on its local test split,
# against FedAvg's global model on the same splits
ON_CLIENTS = ("fedavg", "fedmerge")
LOCAL_CLIENTS = 3


def _keys(model: str, seed: int, rounds: int, steps: int, **keys) -> dict:
    return {**FEDERATION, "model": model, "seed": seed, "num-server-rounds": rounds,
            "max-steps": steps, **keys}


def _scores(config, model) -> tuple[float, float]:
    """(exact match, response loss) of ``model``'s adapter on the server's test split,
    through the server's own evaluator (the federated rows' ``eval_*``)."""
    from pollen.adapters import travelling_state
    from server_app.app import ServerEvaluator

    result = ServerEvaluator(config).evaluate_family(config.model, travelling_state(model))
    return result.accuracy, result.loss


def _client_data(config, client: int, num_clients: int):
    """Client ``client``'s train and test tensors, by the client app's own path (its
    partition, tokenisation and node cache), so the bench scores what the clients hold."""
    from client_app.job import client_data

    return client_data(config, (client, num_clients), None, (), config.model)


def _local(config, num_clients: int) -> tuple[float, float]:
    """Clients 0..LOCAL_CLIENTS-1 alone, each for rounds x steps steps from the base."""
    from pollen.device import node_device
    from pollen.models import build_model
    from pollen.training import make_loader, train

    scores = []
    for client in range(min(LOCAL_CLIENTS, num_clients)):
        model = build_model(config, 0)
        train(model, make_loader(_client_data(config, client, num_clients).train,
                                 config.batch_size, True, config.seed + client),
              epochs=1, lr=config.lr, device=node_device(config), seed=config.seed + client,
              max_steps=config.num_server_rounds * config.max_steps,
              optimizer=config.local_optimizer)
        scores.append(_scores(config, model))
    return float(np.mean([s[0] for s in scores])), float(np.mean([s[1] for s in scores]))


def on_clients(config, run_dir: Path, num_clients: int, personal: bool
               ) -> tuple[float, float]:
    """(exact match, response loss) on the clients' local test splits: the exact match
    each client scores on its own split, then the mean over the clients (FedMerge's
    evaluation in methods.md), and the response loss averaged over the clients weighted by
    their examples (the run's ``client_loss``); of the run's final model, or with
    ``personal`` of each client's own saved merge (``adapters/clients/<id>``; a client
    never sampled has W's zero row, so its merge is the uniform one, the run's final
    model). The adapters go in through peft's
    ``set_peft_model_state_dict``, as at FlowerTune's message boundary."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    from pollen.data import load_task
    from pollen.device import node_device
    from pollen.models import build_model
    from pollen.training import evaluator_for, make_loader

    task = load_task(config)
    device = node_device(config)
    model = build_model(config, 0)
    score = evaluator_for(task.modality, config.model, task.response_labels,
                          config.max_new_tokens)
    results = []
    for client in range(num_clients):
        own = run_dir / "adapters" / "clients" / str(client)
        folder = own if personal and own.is_dir() else run_dir / "model"
        set_peft_model_state_dict(model, load_file(folder / "adapter_model.safetensors"))
        loader = make_loader(_client_data(config, client, num_clients).test,
                             config.batch_size, shuffle=False, seed=0)
        results.append(score(model, loader, device))
    examples = [r.num_examples for r in results]
    return (float(np.mean([r.accuracy for r in results])),
            float(np.average([r.loss for r in results], weights=examples)))


def _mean_real_tokens(config) -> float:
    from pollen.data import load_task
    from pollen.training import torch_dataset

    pool = load_task(config).pool.select(range(200))
    tokens = torch_dataset(pool, "instruct", config.model, config.max_seq_len)
    return float(np.mean([int(mask.sum()) for mask in tokens["attention_mask"]]))


def _cell(run: str, seed: int, quick: bool, rounds: int, steps: int) -> dict:
    """One row's result for one seed: final (exact match, response loss), the per-round
    exact match, and for federated runs (MiB up per training client per round, MiB of the
    whole run, seconds per round, training tokens/s)."""
    from pollen.models import build_model
    from strategies import run_config

    model = "tiny-llama" if quick else "smollm2"
    num_clients = 4 if quick else 10
    config = run_config(_keys(model, seed, rounds, steps))
    if run == "zero-shot":
        return {"final": _scores(config, build_model(config, 0))}
    if run == "local":
        return {"final": _local(config, num_clients)}
    keys = {"strategy": run}
    if run in FAMILY_RUNS:
        keys["model-families"] = ("tiny-llama-l1,tiny-llama" if quick
                                  else "smollm2-l10,smollm2-l20,smollm2")
    # named as its cells file, so that a killed run is resumed only by its own suite
    run_dir, rows, seconds = run_in_process(
        _keys(model, seed, rounds, steps, **keys), num_clients,
        f"llm{'-quick' if quick else ''}-r{rounds}-s{steps}-{run}-seed{seed}")
    replies = sum(r["num_replies"] for r in rows)
    train_seconds = sum(r.get("client_train_seconds_sum") or 0.0 for r in rows)
    tokens = replies * steps * config.batch_size * _mean_real_tokens(config)
    cell = {"final": (rows[-1]["eval_accuracy"], rows[-1]["eval_loss"]),
            "curve": [r["eval_accuracy"] for r in rows],
            "cost": (sum(r["bytes_up"] for r in rows) / max(replies, 1) / 2**20,
                     sum(r["bytes_up"] + r["bytes_down"] for r in rows) / 2**20,
                     seconds / len(rows), tokens / train_seconds if train_seconds else 0.0)}
    if run in ON_CLIENTS:
        cell["on_clients"] = on_clients(config, run_dir, num_clients, run == "fedmerge")
    return cell


RUN_ORDER = ("zero-shot", "local", *FEDERATED, *FAMILY_RUNS)
# Each row's baseline in the report's place table.
PLACES = {**{run: "fedavg" for run in ("zero-shot", "local", *FEDERATED) if run != "fedavg"},
          "heterotune": "fedavg-per-family"}


def federated(quick: bool, seeds: list[int], rounds: int, steps: int, out_dir: Path,
              runs: tuple[str, ...] = RUN_ORDER) -> Path:
    """Each (seed, run) cell is kept in ``llm-cells*.json`` beside the report as it ends, so
    an interrupted bench resumes where it stopped (same rounds and steps); the report
    covers the cells done so far and names the missing ones. The cells file lives in
    ``out_dir`` (docs/benchmarks by default), not in the ignored pollen-runs/, because the
    bench outlasts a session and a checkout: committed, the measured cells are the
    report's source. ``runs`` limits which cells are run now (two checkouts, each with its
    own cells file, can then share the rows; their files merge by key)."""
    model = "tiny-llama" if quick else "smollm2"
    num_clients = 4 if quick else 10
    if quick:
        seeds, rounds, steps = seeds[:1], 2, 2
    cells = Cells(out_dir / f"llm-cells{'-quick' if quick else ''}-r{rounds}-s{steps}.json")
    for seed in seeds:
        for run in runs:
            cells.get(seed, run, lambda run=run, seed=seed: _cell(run, seed, quick, rounds,
                                                                  steps))
    final = {run: [c["final"] for c in cells.of(run, seeds)] for run in RUN_ORDER}
    curves = {run: [c["curve"] for c in cells.of(run, seeds)]
              for run in RUN_ORDER if run not in ("zero-shot", "local")}
    traffic = {run: [c["cost"] for c in cells.of(run, seeds)] for run in curves}
    lines = [f"{model}, AG News as classification as generation, {num_clients} clients "
             f"(Dirichlet 0.5, 3 a round), {rounds} rounds of {steps} steps of 8 prompts, "
             f"seeds {', '.join(map(str, seeds))}; scores on the server's test split "
             "(mean +- std over the seeds). The seconds and tokens/s are wall-clock "
             "figures of cells that may have shared the 2 cores with other jobs; one "
             "fedavg round run alone took 322 s with the clients' evaluation (training "
             "161 s at 177 tokens/s, the server's evaluation 88 s).", "",
             "| run | final exact match | per seed | final response loss | MiB up per "
             "training client per round | MiB whole run (down and up, evaluation included) "
             "| s per round | training tokens/s |",
             "|---|---|---|---|---|---|---|---|"]
    for run, scores in final.items():
        done = [seed for seed in seeds if f"{seed}/{run}" in cells.done]
        per_seed = ", ".join(f"{seed}: {score[0]:.3f}" for seed, score in zip(done, scores))
        if len(scores) < len(seeds):
            lines.append(f"| {run} | {len(scores)} of {len(seeds)} seeds run so far | "
                         f"{per_seed} | | | | | |")
            continue
        matches, losses = np.array([s[0] for s in scores]), np.array([s[1] for s in scores])
        cost = np.mean(traffic[run], axis=0) if traffic.get(run) else None
        ddof = 1 if len(scores) > 1 else 0  # the sample std over seeds
        lines.append(f"| {run} | {matches.mean():.4f} +- {matches.std(ddof=ddof):.4f} | "
                     f"{per_seed} | {losses.mean():.4f} +- {losses.std(ddof=ddof):.4f} | " + (
                         f"{cost[0]:.2f} | {cost[1]:.1f} | {cost[2]:.0f} | "
                         f"{f'{cost[3]:.0f}' if cost[3] else '-'} |"
                         if cost is not None else "- | - | - | - |"))
    lines += ["", "Each row's place against its baseline (FedAvg; HeteroTune against "
              "per-family FedAvg), final exact match over the same seeds: a win or a loss "
              "only when the gap of the means exceeds the larger std.", "",
              "| run | baseline | gap of the means | larger std | place | gap per seed |",
              "|---|---|---|---|---|---|"]
    for run, baseline in PLACES.items():
        if len(final[run]) < len(seeds) or len(final[baseline]) < len(seeds):
            continue
        ours = [score[0] for score in final[run]]
        theirs = [score[0] for score in final[baseline]]
        gap, larger_std = gap_and_larger_std(ours, theirs)
        lines.append(f"| {run} | {baseline} | {gap:+.3f} | {larger_std:.3f} | "
                     f"{place(gap, larger_std)} | "
                     + ", ".join(f"{a - b:+.3f}" for a, b in zip(ours, theirs)) + " |")
    lines += ["", "On the clients' own test splits (each client's exact match on its local "
              "split, then the mean over the clients; FedAvg: its global model; FedMerge: "
              "each client's own merge, the uniform one for a client never sampled):", "",
              "| run | exact match on the clients' splits | response loss there |",
              "|---|---|---|"]
    on_client_matches = {}
    for run in ON_CLIENTS:
        values = [c["on_clients"] for c in cells.of(run, seeds) if "on_clients" in c]
        on_client_matches[run] = [v[0] for v in values]
        lines.append(f"| {run} | " + (
            f"{mean_std([v[0] for v in values])} | {mean_std([v[1] for v in values])} |"
            if len(values) == len(seeds) else f"{len(values)} of {len(seeds)} seeds so far | |"))
    if all(len(v) == len(seeds) for v in on_client_matches.values()):
        gap, larger_std = gap_and_larger_std(on_client_matches["fedmerge"],
                                             on_client_matches["fedavg"])
        lines += ["", f"FedMerge's merges - FedAvg's global model there: {gap:+.3f} (the "
                  f"larger std {larger_std:.3f}: {place(gap, larger_std)})."]
    lines += ["", "Exact match per round (mean over the seeds):", "",
              "| run | " + " | ".join(str(r) for r in range(1, rounds + 1)) + " |",
              "|---|" + "---|" * rounds]
    for run, runs in curves.items():
        if len(runs) < len(seeds):
            continue
        lines.append(f"| {run} | " + " | ".join(f"{v:.3f}" for v in np.mean(runs, axis=0))
                     + " |")
    name = "llm-quick" if quick else "llm"
    return write_report(name, "Federated instruction tuning of SmolLM2 on AG News",
                        f"python -m bench.llm federated{' --quick' if quick else ''}",
                        "\n".join(lines), out_dir)


def gguf_cache(out_dir: Path) -> Path:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pollen.models import gguf_file
    from pollen.nodecache import CACHE_ENV, gguf_as_transformers

    os.environ[CACHE_ENV] = tempfile.mkdtemp(prefix="pollen-gguf-cache-")
    path = gguf_file("smollm2")

    def seconds(load) -> float:
        started = time.perf_counter()
        load()
        return time.perf_counter() - started

    first = seconds(lambda: [gguf_as_transformers(path, p) for p in ("model", "tokenizer")])
    rows = [("model", AutoModelForCausalLM), ("tokenizer", AutoTokenizer)]
    lines = ["| part | from the GGUF file s | from the cache's copy s |", "|---|---|---|"]
    for part, loader in rows:
        gguf = seconds(lambda: loader.from_pretrained(path.parent, gguf_file=path.name))
        copy = seconds(lambda: loader.from_pretrained(gguf_as_transformers(path, part)))
        lines.append(f"| {part} | {gguf:.1f} | {copy:.1f} |")
    size = sum(f.stat().st_size for f in Path(os.environ[CACHE_ENV]).rglob("*") if f.is_file())
    lines += ["", f"First use (reading the GGUF file and writing both copies): {first:.1f} s; "
              f"the copies take {size / 1e6:.0f} MB."]
    return write_report("llm-gguf-cache", "SmolLM2 from its GGUF file and from the node cache",
                        "python -m bench.llm gguf-cache", "\n".join(lines), out_dir)


def _layouts(depth: int, num_layers: int) -> dict[str, list[int]]:
    middle = np.linspace(2, num_layers - 3, depth - 4).round().astype(int).tolist()
    return {f"first {depth}": list(range(depth)),
            f"first and last {depth // 2}": [*range(depth // 2),
                                             *range(num_layers - depth // 2, num_layers)],
            f"first 2, last 2, {depth - 4} evenly between": [0, 1, *middle,
                                                             num_layers - 2, num_layers - 1]}


def depth_layouts(out_dir: Path) -> Path:
    """Layers are dropped from the evaluator's own model in place (each layer's
    ``layer_idx``, its KV-cache slot in generation, renumbered): the product builds only
    the prefixes (``pollen.models.build_causal_lm``)."""
    from server_app.app import ServerEvaluator
    from strategies import run_config

    config = run_config(_keys("smollm2", 0, 5, 10))
    evaluator = ServerEvaluator(config)
    model = evaluator.models[config.model]
    decoder = model.get_base_model().model
    layers = list(decoder.layers)
    layouts = {f"all {len(layers)}": list(range(len(layers)))}
    for depth in (20, 10):
        layouts.update(_layouts(depth, len(layers)))
    lines = ["| decoder layers kept | indices | exact match | response loss |",
             "|---|---|---|---|"]
    for name, kept in layouts.items():
        decoder.layers = torch.nn.ModuleList(layers[i] for i in kept)
        for index, layer in enumerate(decoder.layers):
            layer.self_attn.layer_idx = index
        decoder.config.num_hidden_layers = len(kept)
        result = evaluator.evaluators[config.model](model, evaluator.loaders[config.model],
                                                    evaluator.device)
        lines.append(f"| {name} | {','.join(map(str, kept))} | {result.accuracy:.3f} | "
                     f"{result.loss:.3f} |")
        print(lines[-1], flush=True)
    return write_report("llm-depth-layouts", "Layer-dropped SmolLM2 before training",
                        "python -m bench.llm depth-layouts", "\n".join(lines), out_dir)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("suite", choices=("federated", "memory", "gguf-cache",
                                            "depth-layouts", "cost"))
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--runs", help="the rows to run now (the report covers every row's "
                        "cells); federated: all of RUN_ORDER, cost: bench.llm_rounds.RUNS")
    parser.add_argument("--out", type=Path, default=DOCS)
    parser.add_argument("--part", choices=("all", "loops", "rounds"), default="all",
                        help="cost: the three loops, evaluation and padding (loops), the "
                             "round phases of fedavg, guided and int8 (rounds), or both")
    args = parser.parse_args()
    from bench.llm_rounds import RUNS

    known = list(RUNS) if args.suite == "cost" else list(RUN_ORDER)
    runs = args.runs.split(",") if args.runs else known
    unknown = set(runs) - set(known)
    if unknown:
        parser.error(f"unknown --runs {sorted(unknown)}: choose from {', '.join(known)}")
    if args.suite == "memory":
        memory(args.quick, args.out)
    elif args.suite == "cost":
        from bench.llm_cost import cost
        from bench.llm_rounds import rounds

        if args.part in ("all", "loops"):
            cost(args.quick, args.out)
        if args.part in ("all", "rounds"):
            rounds(args.quick, [int(s) for s in args.seeds.split(",")], runs, args.out)
    elif args.suite == "gguf-cache":
        print(gguf_cache(args.out).read_text())
    elif args.suite == "depth-layouts":
        if args.quick:
            parser.error("depth-layouts has no --quick: it is about SmolLM2's layers")
        depth_layouts(args.out)
    else:
        federated(args.quick, [int(s) for s in args.seeds.split(",")], args.rounds,
                  args.steps, args.out, tuple(runs))


if __name__ == "__main__":
    main()
