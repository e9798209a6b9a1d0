"""Datasets, the server's held-out test split, and each client's partition.

Every source becomes a ``datasets.Dataset`` with an integer ``label`` (a ClassLabel) and
either ``pixels`` (digits: 64 floats in [0, 1]) or ``text``. The split is a pure function
of the config: the server and every client compute the same one independently.

1. ``server_test_fraction`` of the examples (stratified by label) is the server's test
   split; no client ever trains on it.
2. Hybrid setting (``server-data-fraction`` > 0): a stratified share of the rest is the
   server's own training data, held out before partitioning (``pollen.server_data``
   turns it into D_s); no client sees it.
3. The rest, the pool, is partitioned with a flwr-datasets partitioner: IID, Dirichlet
   or pathological over the label, or ``natural-id``: one client per value of the
   ``partition-column`` (flwr-datasets' NaturalIdPartitioner, values in sorted order, so
   the federation needs exactly as many supernodes as the pool has values).
4. Each partition is split into the client's local train and test splits; with
   ``client-label-noise``, the train split of each noisy client has that share of its
   labels flipped to another class (``noisy_clients`` says which clients).
In deployment a client brings its own file instead (``client_file_split``): it is split
into local train and test, its labels mapped to the class names of the server's dataset.

How table files become datasets: ``pollen.tables``.
"""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import datasets
import numpy as np

from pollen.config import TABLE_SUFFIXES, ConfigError, RunConfig
from pollen.seeding import derive_seed
from pollen.tables import NATURAL_ID, Columns, build_table, from_hub, read_own_table, read_table

if TYPE_CHECKING:
    from flwr_datasets.partitioner.partitioner import Partitioner

datasets.disable_progress_bars()

MIN_CLIENT_EXAMPLES = 2  # one for the local train split, one for the local test split


@dataclass(frozen=True)
class TaskData:
    """What the config's dataset resolves to, before partitioning."""

    pool: datasets.Dataset
    server_test: datasets.Dataset
    label_names: tuple[str, ...]
    modality: str  # "image" (pixels), "text" (text) or "instruct" (prompt, response)
    server_held: datasets.Dataset | None = None  # the hybrid setting's server share
    # instruct: the responses are the label names (classification as generation); their
    # display names, which greedy generation is read against.
    response_labels: tuple[str, ...] = ()

    @property
    def num_classes(self) -> int:
        return len(self.label_names)


def load_task(config: RunConfig) -> TaskData:
    return _load_task(config.dataset, Columns.of(config), config.server_test_fraction,
                      config.server_data_fraction, config.seed)


@functools.lru_cache(maxsize=4)
def _load_task(dataset: str, columns: Columns, server_test_fraction: float,
               server_data_fraction: float, seed: int) -> TaskData:
    response_labels: tuple[str, ...] = ()
    if dataset == "digits":
        if columns.task == "instruct":
            raise ConfigError("task 'instruct' needs a text table (instruction data or "
                              "labelled text), not the digits images")
        table, modality = _digits(), "image"
    else:
        frame = (from_hub(dataset[3:]) if dataset.startswith("hf:")
                 else read_table(Path(dataset).expanduser(), columns.label,
                                 (columns.response, columns.instruction)))
        table, response_labels = build_table(frame, columns, dataset)
        modality = "instruct" if columns.task == "instruct" else "text"
    label_names = (tuple(table.features["label"].names) if "label" in table.column_names
                   else ())
    if len(table) < 2 * max(len(label_names), 1):
        raise ConfigError(f"dataset '{dataset}' has {len(table)} examples: too few to hold "
                          f"out a server test split for {len(label_names)} classes")
    stratify = "label" if label_names else None
    split = table.train_test_split(test_size=server_test_fraction, seed=seed,
                                   stratify_by_column=stratify)
    if server_data_fraction == 0.0:
        return TaskData(split["train"], split["test"], label_names, modality,
                        response_labels=response_labels)
    held = round(server_data_fraction * len(split["train"]))
    if held < len(label_names) or len(split["train"]) - held < len(label_names):
        raise ConfigError(
            f"server-data-fraction {server_data_fraction} of the {len(split['train'])}-example "
            f"pool holds {held} example(s): the server set would be empty or miss classes "
            f"(a stratified share needs at least {len(label_names)}, one per class, and must "
            "leave as many to the clients)")
    hybrid = split["train"].train_test_split(test_size=held, seed=seed,
                                             stratify_by_column=stratify)
    return TaskData(hybrid["train"], split["test"], label_names, modality, hybrid["test"],
                    response_labels)


def client_split(task: TaskData, config: RunConfig, partition_id: int,
                 num_partitions: int) -> tuple[datasets.Dataset, datasets.Dataset]:
    """The local (train, test) splits of one client."""
    check_enough_examples(task, num_partitions)
    if not 0 <= partition_id < num_partitions:
        raise ConfigError(f"partition-id {partition_id} is outside 0..{num_partitions - 1}")
    if config.partitioner in LABEL_PARTITIONERS and not task.label_names:
        raise ConfigError(f"partitioner '{config.partitioner}' splits by the label column "
                          f"'{config.label_column}', which dataset '{config.dataset}' does not "
                          "have: use partitioner='iid' or name a label column")
    if config.client_label_noise > 0 and task.modality == "instruct":
        raise ConfigError("client-label-noise flips classifier labels; it is not defined "
                          "for task 'instruct'")
    partitioner = build_partitioner(config, num_partitions, task.num_classes, task.pool)
    partitioner.dataset = task.pool
    try:
        partition = partitioner.load_partition(partition_id)
    except ValueError as error:  # flwr-datasets gives up after 10 draws
        if config.partitioner != "dirichlet" or "max number of attempts" not in str(error):
            raise
        raise ConfigError(
            f"dirichlet-alpha {config.dirichlet_alpha:g} over {task.num_classes} classes "
            f"and {num_partitions} clients: in 10 draws (seed {config.seed}) flwr-datasets' "
            f"DirichletPartitioner found no split that gives every client at least "
            f"{MIN_CLIENT_EXAMPLES} examples; raise dirichlet-alpha, run fewer clients or "
            "change the seed") from error
    if len(partition) < MIN_CLIENT_EXAMPLES:
        raise ConfigError(
            f"client partition {partition_id} holds {len(partition)} example(s); each "
            f"client needs at least {MIN_CLIENT_EXAMPLES} (a local train and test example)"
        )
    split = partition.train_test_split(test_size=config.local_test_fraction,
                                       seed=config.seed + partition_id)
    train = split["train"]
    if config.client_label_noise > 0 and partition_id in noisy_clients(config, num_partitions):
        train = _flip_labels(train, config.client_label_noise, task.num_classes,
                             derive_seed(config.seed, "label-noise", partition_id))
    return train, split["test"]


def noisy_clients(config: RunConfig, num_partitions: int) -> list[int]:
    """Partition ids whose train labels are corrupted: a seeded sample of
    round(noisy-client-fraction x clients), none when client-label-noise is 0."""
    if config.client_label_noise == 0:
        return []
    count = round(config.noisy_client_fraction * num_partitions)
    return sorted(random.Random(derive_seed(config.seed, "noisy-clients"))
                  .sample(range(num_partitions), count))


def _flip_labels(split: datasets.Dataset, noise: float, num_classes: int,
                 seed: int) -> datasets.Dataset:
    """round(noise x n) labels, chosen at random, each moved to a uniformly drawn other
    class (symmetric label noise)."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(split["label"], dtype=np.int64)
    flipped = rng.choice(len(labels), size=round(noise * len(labels)), replace=False)
    labels[flipped] = (labels[flipped] + rng.integers(1, num_classes, size=len(flipped))
                       ) % num_classes
    features = split.features.copy()
    return split.remove_columns("label").add_column("label", labels.tolist(),
                                                    feature=features["label"])


def client_file_split(path: str, config: RunConfig, label_names: tuple[str, ...]
                      ) -> tuple[datasets.Dataset, datasets.Dataset, tuple[str, ...]]:
    """The local (train, test) splits of a client that brings its own file (deployment:
    node config ``data-path``), its labels mapped to the run's ``label_names``."""
    file = Path(path).expanduser()
    if file.suffix.lower() not in TABLE_SUFFIXES or not file.is_file():
        raise ConfigError(f"data-path {file} is not a {'/'.join(TABLE_SUFFIXES)} file that "
                          "exists on this client")
    if config.client_label_noise > 0:
        raise ConfigError("client-label-noise corrupts partitions of the run's dataset in "
                          "simulation; a client with its own data-path uses its labels as "
                          "they are: set client-label-noise = 0")
    table, response_labels = read_own_table(file, config, label_names)
    if len(table) < MIN_CLIENT_EXAMPLES:
        raise ConfigError(f"data-path {file} holds {len(table)} example(s); a client needs "
                          f"at least {MIN_CLIENT_EXAMPLES}")
    split = table.train_test_split(test_size=config.local_test_fraction, seed=config.seed)
    return split["train"], split["test"], response_labels


def check_enough_examples(task: TaskData, num_clients: int) -> None:
    if len(task.pool) < MIN_CLIENT_EXAMPLES * num_clients:
        raise ConfigError(
            f"the training pool has {len(task.pool)} examples for {num_clients} clients; "
            f"each client needs at least {MIN_CLIENT_EXAMPLES}"
        )


LABEL_PARTITIONERS = ("dirichlet", "pathological")


def build_partitioner(config: RunConfig, num_partitions: int, num_classes: int,
                      pool: datasets.Dataset) -> Partitioner:
    # Imported here: flwr_datasets.partitioner imports its plotting helpers (seaborn,
    # scipy.stats), about 2 s that a deployed client reading its own file never needs
    # (and one whose split is in its node cache needs once).
    from flwr_datasets.partitioner import (DirichletPartitioner, IidPartitioner,
                                           NaturalIdPartitioner, PathologicalPartitioner)

    if config.partitioner == "iid":
        return IidPartitioner(num_partitions=num_partitions)
    if config.partitioner == "natural-id":
        ids = pool.unique(NATURAL_ID)
        if len(ids) != num_partitions:
            raise ConfigError(
                f"partition-column '{config.partition_column}' has {len(ids)} distinct "
                f"value(s) in the training pool (after the server's held-out shares) but the "
                f"federation has {num_partitions} clients: natural-id partitioning gives "
                "each value one client, so run that many supernodes")
        return NaturalIdPartitioner(partition_by=NATURAL_ID)
    if config.partitioner == "dirichlet":
        return DirichletPartitioner(
            num_partitions=num_partitions, partition_by="label",
            alpha=config.dirichlet_alpha, min_partition_size=MIN_CLIENT_EXAMPLES,
            self_balancing=False, seed=config.seed,
        )
    if config.pathological_classes > num_classes:
        raise ConfigError(f"pathological-classes={config.pathological_classes} exceeds the "
                          f"dataset's {num_classes} classes")
    return PathologicalPartitioner(
        num_partitions=num_partitions, partition_by="label",
        num_classes_per_partition=config.pathological_classes,
        class_assignment_mode="first-deterministic", seed=config.seed,
    )


def _digits() -> datasets.Dataset:
    from sklearn.datasets import load_digits

    digits = load_digits()
    features = datasets.Features({
        "pixels": datasets.Sequence(datasets.Value("float32"), length=64),
        "label": datasets.ClassLabel(names=[str(d) for d in range(10)]),
    })
    pixels = (digits.data / 16.0).astype(np.float32)
    return datasets.Dataset.from_dict(
        {"pixels": pixels.tolist(), "label": digits.target.tolist()}, features=features)


