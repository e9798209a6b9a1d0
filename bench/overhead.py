"""Server overhead: each strategy's aggregation against Flower's FedAvg, on the same
synthetic replies, next to the floor of reading every reply byte once.

    python -m bench server-overhead [--quick]

Replies are the layout of a real model's travelling tensors (MiniLM + LoRA r=8 on
query/value + head: 75,268 parameters; full MiniLM: 22.7M; DeMA for heterotune), each the
tensors its client was sent plus seeded Gaussian noise, 100 examples each. For every
strategy and client count the replies are built afresh (Pollen's validation replaces a
reply's tensors with its checked copy) and round 1's ``aggregate_train`` is timed
(``configure_train`` alongside): the median of 9 repeats (3 at 1,000 clients; 1 for
strategies that train on the server: guided's coefficient search, central's training,
which do not depend on the client count).
Flower's ``FedAvg.aggregate_train`` on the same replies is the baseline; the floor is one
``np.add`` pass over the same bytes (every reply array, read in place, added to a
float32 accumulator). Each strategy is timed as the server app builds it, inside the
validation wrapper (``strategies/validation.py``), so its time includes the checks.
Targets (issue #20): every strategy within 1.5x Flower's FedAvg (FedMerge with d = 3
within 3x), FedAvg within 2x the floor. Full size runs at 10 clients only: 100
replies of 22.7M float32 parameters are 9 GB before any copy, more than this machine's
24 GB allows once the strategies' copies are counted. --quick: tiny-bert and 10 and 100
clients. Expected duration on 2 CPU cores: about 10 minutes; --quick 1.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg as FlowerFedAvg

from bench.common import AG_NEWS, pyplot, save_plot, write_report
from pollen.adapters import travelling_state
from pollen.config import RunConfig
from pollen.data import load_task
from pollen.models import build_backbone
from pollen.progress import Progress
from pollen.records import ARRAYS_KEY, array_views, from_array_record, to_array_record
from pollen.server_data import load_server_data
from strategies import build_model_for, build_strategy, run_config
from strategies.directory import ClientDirectory
from strategies.guided.client import GLOBAL_ROUND_KEY
from strategies.mosaic.client import PROTOTYPES_KEY
from strategies.spec import ServerSetup
from tests.deployment import write_topics
from tests.localgrid import LocalGrid

LORA_STRATEGIES = ["fedavg", "fedprox", "fedref", "fedmerge", "guided", "central",
                   "fedavg-per-family", "hetlora", "mosaic"]
SERVER_TRAINING = {"guided", "central"}
NUM_CLASSES = 4


def _describe(num_train: int, family: str):
    def describe(msg: Message, context) -> Message:
        about = ConfigRecord({"client-id": str(context.node_config["partition-id"]),
                              "num-train": num_train, "num-test": 10, "family": family})
        return Message(RecordDict({"client": about}), reply_to=msg)
    return describe


class Setting:
    """One model layout: the run config, the server's model and data, and the strategy
    a name builds."""

    def __init__(self, config: RunConfig, full: bool) -> None:
        self.config = config.replace(fraction_train=1.0)
        task = load_task(self.config)
        self.model = build_model_for(self.config, self.config.model, NUM_CLASSES)
        if full:  # every parameter travels: full fine-tuning
            self.model = build_backbone(self.config.model, NUM_CLASSES, self.config.seed)
        self.initial = travelling_state(self.model)
        self.server_data = (load_server_data(self.config, task)
                            if self.config.has_server_data else None)
        self.parameters = int(sum(a.size for a in self.initial.values()))
        self.feature_width = int(self.model.config.hidden_size) if hasattr(
            self.model, "config") else 0

    def strategy(self, name: str, grid: LocalGrid):
        config = run_config({**self.config.to_mapping(), "strategy": name,
                             "num-server-rounds": 3, "hetlora.ranks": "8",
                             "mosaic.warmup-rounds": 1})
        directory = ClientDirectory(config.to_mapping(), timeout=60)
        directory.refresh(grid, strict=True)
        family = config.model
        return build_strategy(ServerSetup(config, directory, {family: self.model},
                                          {family: self.initial}, NUM_CLASSES, "text",
                                          self.server_data))


def _replies(messages: list[Message], seed: int, width: int) -> list[Message]:
    rng = np.random.default_rng(seed)
    replies = []
    for message in messages:
        sent = from_array_record(message.content[ARRAYS_KEY])
        tensors = {n: v + rng.normal(0, 1e-3, v.shape).astype(np.float32)
                   for n, v in sent.items()}
        content = RecordDict({ARRAYS_KEY: to_array_record(tensors), "metrics": MetricRecord(
            {"num-examples": 100, "train_loss": 1.0, GLOBAL_ROUND_KEY: 0})})
        if width:
            content[PROTOTYPES_KEY] = to_array_record({
                "features": rng.normal(size=(NUM_CLASSES, width)).astype(np.float32),
                "labels": np.arange(NUM_CLASSES, dtype=np.float32),
                "class-counts": np.full(NUM_CLASSES, 25.0, np.float32)})
        message.metadata.__dict__["_message_id"] = f"m{message.metadata.dst_node_id}"
        replies.append(Message(content, reply_to=message))
    return replies


def _time_strategy(setting: Setting, name: str, grid: LocalGrid, repeats: int
                   ) -> tuple[float, float]:
    """Median seconds of round 1's (configure_train, aggregate_train)."""
    configure, aggregate = [], []
    for repeat in range(repeats):
        strategy = setting.strategy(name, grid)
        started = time.perf_counter()
        messages = list(strategy.configure_train(1, strategy.global_arrays, ConfigRecord(),
                                                 grid))
        configure.append(time.perf_counter() - started)
        replies = _replies(messages, repeat, setting.feature_width if name == "mosaic" else 0)
        started = time.perf_counter()
        arrays, _ = strategy.aggregate_train(1, replies)
        aggregate.append(time.perf_counter() - started)
        if arrays is None:
            raise RuntimeError(f"{name} aggregated nothing: {strategy.rejected}")
    return statistics.median(configure), statistics.median(aggregate)


def _time_flower(setting: Setting, grid: LocalGrid, repeats: int) -> tuple[float, float]:
    """(Flower FedAvg's aggregate_train, the floor) on replies to the initial model."""
    strategy, floor, flower = setting.strategy("fedavg", grid), [], []
    for repeat in range(repeats):
        messages = list(strategy.configure_train(1, strategy.global_arrays, ConfigRecord(),
                                                 grid))
        replies = _replies(messages, repeat, 0)
        started = time.perf_counter()
        total = {n: np.zeros(a.shape, np.float32) for n, a in setting.initial.items()}
        for reply in replies:
            for name, value in array_views(reply.content[ARRAYS_KEY]).items():
                np.add(total[name], value, out=total[name])
        floor.append(time.perf_counter() - started)
        started = time.perf_counter()
        FlowerFedAvg().aggregate_train(1, replies)
        flower.append(time.perf_counter() - started)
    return statistics.median(flower), statistics.median(floor)


def run(quick: bool, out_dir: Path) -> Path:
    folder = Path(tempfile.mkdtemp(prefix="pollen-overhead-"))
    if quick:
        dataset = str(write_topics(folder / "topics.csv", 400,
                                   ["sport", "money", "space", "music"], 1))
        model, counts = "tiny-bert", (10, 100)
    else:
        dataset, model, counts = str(AG_NEWS), "minilm", (10, 100, 1000)
    base = run_config({"dataset": dataset, "model": model, "max-seq-len": 64,
                                   "server-data-fraction": 0.05, "partitioner": "iid"})
    settings = [("adapter (LoRA)", Setting(base, False), LORA_STRATEGIES, counts),
                ("adapter (DeMA)", Setting(base.replace(strategy="heterotune"), False),
                 ["heterotune"], counts),
                ("full model", Setting(base, True),
                 [s for s in LORA_STRATEGIES if s != "hetlora"], counts[:1])]
    progress = Progress(sum(len(c) for *_, c in settings), "server-overhead")
    rows = []
    for label, setting, names, client_counts in settings:
        for n in client_counts:
            grid = LocalGrid.simulation(_describe(100, model), num_nodes=n)
            # median of 9 where a repeat takes milliseconds, of 3 at 1,000 clients (and in
            # the quick smoke run)
            repeats = 1 if setting.parameters > 1e6 else 9 if n <= 100 and not quick else 3
            flower, floor = _time_flower(setting, grid, repeats)
            for name in names:
                configure, seconds = _time_strategy(setting, name, grid,
                                                    1 if name in SERVER_TRAINING else repeats)
                rows.append((label, setting.parameters, n, name, seconds, flower, floor,
                             configure))
            print(progress.step(f"{label}, {n} clients"), flush=True)
    lines = [f"Model {model}; seconds of round 1's aggregate_train (median of 9 repeats, "
             "of 3 at 1,000 clients, one run when the model is full size or the strategy "
             "trains on the server), Flower's "
             "FedAvg.aggregate_train and the floor (one np.add pass over every reply array, "
             "read in place) on the same replies; configure_train's seconds alongside "
             "(building each client's message). Each strategy runs inside the validation "
             "wrapper, so its seconds include the reply checks.", "",
             "| layout | parameters | clients | strategy | aggregate s | Flower FedAvg s | "
             "ratio to Flower FedAvg | floor s | ratio to floor | configure s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for label, parameters, n, name, seconds, flower, floor, configure in rows:
        lines.append(f"| {label} | {parameters:,} | {n} | {name} | {seconds:.4f} | "
                     f"{flower:.4f} | {seconds / flower:.2f} | {floor:.4f} | "
                     f"{seconds / floor:.2f} | {configure:.4f} |")
    lines.append("")
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(7, 4))
    for name in LORA_STRATEGIES + ["heterotune"]:
        points = [(n, s / f) for label, _, n, s_name, s, f, *_ in rows
                  if s_name == name and label.startswith("adapter")]
        if points and name not in SERVER_TRAINING:
            axis.plot(*zip(*points), marker="o", label=name)
    axis.set(xscale="log", yscale="log", xlabel="clients", ylabel="seconds / Flower FedAvg's",
             title="Aggregation time at adapter size, relative to Flower's FedAvg")
    axis.legend(fontsize=7)
    name = "server-overhead-quick" if quick else "server-overhead"
    lines.append(save_plot(figure, out_dir, name))
    return write_report(name, "Server overhead of each strategy's aggregation",
                        f"python -m bench server-overhead{' --quick' if quick else ''}",
                        "\n".join(lines), out_dir)
