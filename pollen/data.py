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

Columns of table files (.csv, .tsv, .jsonl, .parquet):
- label: the ``label-column`` key (default ``label``).
- text: the ``text-column`` key, several names joined by commas; when empty, a ``text``
  column if there is one, else every other column (but ``partition-column``), joined
  with ". " in file order.
- A .csv/.tsv file has a header row when its first row contains the label column's name.
  Otherwise, if ``label-column`` is left at its default, it is read without a header: the
  first column is the label and the others are text (the layout of the AG News files).
  A non-default ``label-column`` that the first row does not name is an error.
Labels may be any values; they are mapped to 0..C-1 in sorted order (numerically when
all are numbers), so AG News's 1-4 become 0-3. ``class-names`` gives them display names
in that order (the responses of classification as generation).

With ``task = instruct`` a table becomes (prompt, response) pairs instead
(``pollen.instruct``): columns ``prompt`` and ``response``, ``label`` when the table has
a label column (for partitioning), modality "instruct".
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import random
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
import pandas as pd
from flwr_datasets.partitioner import (
    DirichletPartitioner,
    IidPartitioner,
    NaturalIdPartitioner,
    PathologicalPartitioner,
)
from flwr_datasets.partitioner.partitioner import Partitioner

from pollen import instruct
from pollen.config import TABLE_SUFFIXES, ConfigError, RunConfig
from pollen.seeding import derive_seed

datasets.disable_progress_bars()

DEFAULT_LABEL_COLUMN = RunConfig.label_column
MIN_CLIENT_EXAMPLES = 2  # one for the local train split, one for the local test split
NATURAL_ID = "natural_id"  # the partition column's values, as strings


@dataclass(frozen=True)
class Columns:
    """What the run config says about a table's columns and task."""

    task: str
    text: str
    label: str
    label_names: tuple[str, ...]  # display names, in the order of the sorted labels
    instruction: str
    input: str
    response: str
    partition: str  # natural-id partitioning: the column kept as ``NATURAL_ID``; or ""

    @classmethod
    def of(cls, config: RunConfig) -> Columns:
        return cls(config.task, config.text_column, config.label_column,
                   tuple(config.class_name_list), config.instruction_column,
                   config.input_column, config.response_column,
                   config.partition_column if config.partitioner == "natural-id" else "")


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
        frame = (_from_hub(dataset[3:]) if dataset.startswith("hf:")
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


def build_table(frame: pd.DataFrame, columns: Columns, source: str,
                label_names: tuple[str, ...] | None = None
                ) -> tuple[datasets.Dataset, tuple[str, ...]]:
    """The dataset of a table for the run's task, and the display names of the labels
    when they are the responses (classification as generation; else ()); with a
    partition column, its values as strings in ``NATURAL_ID``."""
    frame.columns = [str(c) for c in frame.columns]
    table, response_labels = _task_table(frame, columns, source, label_names)
    if not columns.partition:
        return table, response_labels
    if columns.partition not in frame.columns:
        raise ConfigError(f"partition-column '{columns.partition}' not found in {source}; "
                          f"its columns are: {', '.join(frame.columns)}")
    return table.add_column(NATURAL_ID, frame[columns.partition].astype(str).tolist()), \
        response_labels


def _task_table(frame: pd.DataFrame, columns: Columns, source: str,
                label_names: tuple[str, ...] | None) -> tuple[datasets.Dataset, tuple[str, ...]]:
    if columns.task == "instruct" and instruct.is_instruction_table(frame, columns.response):
        prompts, responses = instruct.instruction_pairs(frame, columns.instruction,
                                                        columns.input, columns.response,
                                                        source)
        pairs = datasets.Dataset.from_dict({"prompt": prompts, "response": responses})
        if columns.label not in [str(c) for c in frame.columns]:
            return pairs, ()
        labels = _labels_to_dataset(pd.Series(prompts), _raw_labels(frame, columns.label),
                                    columns.label, source, label_names)
        return pairs.add_column("label", labels["label"], feature=labels.features["label"]), ()
    if columns.task == "instruct" and columns.label not in [str(c) for c in frame.columns]:
        raise ConfigError(f"task 'instruct' needs a response column '{columns.response}' "
                          f"(instruction data) or a label column '{columns.label}' "
                          f"(classification as generation) in {source}; its columns are: "
                          f"{', '.join(str(c) for c in frame.columns)}")
    table = normalise_table(frame, columns.text, columns.label, source, label_names,
                            columns.partition)
    names = display_names(columns, tuple(table.features["label"].names))
    if columns.task != "instruct":
        return table, ()
    prompts = [instruct.classification_prompt(t, names) for t in table["text"]]
    responses = [names[i] for i in table["label"]]
    return table.remove_columns("text").add_column("prompt", prompts).add_column(
        "response", responses), names


def display_names(columns: Columns, label_names: tuple[str, ...]) -> tuple[str, ...]:
    """``class-names`` if given (one per class, in the order of the sorted labels), else
    the label values."""
    if not columns.label_names:
        return label_names
    if len(columns.label_names) != len(label_names):
        raise ConfigError(f"class-names gives {len(columns.label_names)} names for "
                          f"{len(label_names)} classes ({', '.join(label_names)})")
    return columns.label_names


def _raw_labels(frame: pd.DataFrame, label_column: str) -> list[str]:
    return [str(v) for v in frame[label_column].tolist()]


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
    partition = partitioner.load_partition(partition_id)
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


def read_own_table(file: Path, config: RunConfig, label_names: tuple[str, ...]
                   ) -> tuple[datasets.Dataset, tuple[str, ...]]:
    """A table file other than the run's dataset (a client's ``data-path``, the server's
    ``server-data``), read like it for the run's task, its labels mapped to the run's
    ``label_names`` when there are any; nothing is partitioned, so no partition column."""
    columns = dataclasses.replace(Columns.of(config), partition="")
    return build_table(read_table(file, config.label_column, (columns.response,
                                                                columns.instruction)),
                       columns, str(file), label_names or None)


def check_enough_examples(task: TaskData, num_clients: int) -> None:
    if len(task.pool) < MIN_CLIENT_EXAMPLES * num_clients:
        raise ConfigError(
            f"the training pool has {len(task.pool)} examples for {num_clients} clients; "
            f"each client needs at least {MIN_CLIENT_EXAMPLES}"
        )


LABEL_PARTITIONERS = ("dirichlet", "pathological")


def build_partitioner(config: RunConfig, num_partitions: int, num_classes: int,
                      pool: datasets.Dataset) -> Partitioner:
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


def _from_hub(dataset_id: str) -> pd.DataFrame:
    """The train split of a hub dataset, fetched through flwr-datasets."""
    from flwr_datasets import FederatedDataset

    federated = FederatedDataset(dataset=dataset_id,
                                 partitioners={"train": IidPartitioner(num_partitions=1)})
    try:
        return federated.load_split("train").to_pandas()
    except Exception as error:  # network, authentication, unknown id: all end the run here
        raise ConfigError(f"dataset 'hf:{dataset_id}' could not be loaded through "
                          f"flwr-datasets (is the Hugging Face Hub reachable?): "
                          f"{type(error).__name__}: {error}") from error


def read_table(path: Path, label_column: str, header_names: tuple[str, ...] = ()
               ) -> pd.DataFrame:
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        delimiter = "\t" if suffix == ".tsv" else ","
        with path.open(newline="", encoding="utf-8") as handle:
            first_row = next(csv.reader(handle, delimiter=delimiter), None)
        if first_row is None:
            raise ConfigError(f"dataset file is empty: {path}")
        if label_column in first_row or set(header_names) & set(first_row):
            return pd.read_csv(path, sep=delimiter, keep_default_na=False)
        if label_column != DEFAULT_LABEL_COLUMN:
            raise ConfigError(f"label column '{label_column}' not found in {path}; its first "
                              f"row is: {', '.join(first_row)}")
        frame = pd.read_csv(path, sep=delimiter, header=None, keep_default_na=False)
        if frame.shape[1] < 2:
            raise ConfigError(f"{path} has no header row naming '{label_column}' and only "
                              "one column, so it holds no text besides a label")
        names = [label_column] + [f"column{i}" for i in range(1, frame.shape[1])]
        frame.columns = names
        return frame
    if suffix == ".jsonl":
        return pd.read_json(path, lines=True)
    return pd.read_parquet(path)


def normalise_table(frame: pd.DataFrame, text_column: str, label_column: str, source: str,
                    label_names: tuple[str, ...] | None = None,
                    partition_column: str = "") -> datasets.Dataset:
    """Reduce a table to (text, label) with labels mapped to 0..C-1: in sorted order, or
    to their position in ``label_names`` when the run's labels are already known."""
    columns = [str(c) for c in frame.columns]
    frame.columns = columns
    if label_column not in columns:
        raise ConfigError(f"label column '{label_column}' not found in {source}; "
                          f"its columns are: {', '.join(columns)}")
    text = text_of(frame, text_column, label_column, source, partition_column)
    return _labels_to_dataset(text, _raw_labels(frame, label_column), label_column, source,
                              label_names)


def text_of(frame: pd.DataFrame, text_column: str, label_column: str,
            source: str, partition_column: str = "") -> pd.Series:
    """One string per row, from the table's text columns (see "Columns" above)."""
    columns = [str(c) for c in frame.columns]
    frame.columns = columns
    if text_column:
        text_columns = [c.strip() for c in text_column.split(",")]
        missing = [c for c in text_columns if c not in columns]
        if missing:
            raise ConfigError(f"text column(s) {', '.join(missing)} not found in {source}; "
                              f"its columns are: {', '.join(columns)}")
    elif "text" in columns and label_column != "text":
        text_columns = ["text"]
    else:
        text_columns = [c for c in columns if c not in (label_column, partition_column)]
    if not text_columns:
        raise ConfigError(f"{source} has no text column besides label '{label_column}'")
    if len(frame) == 0:
        raise ConfigError(f"{source} holds no rows")
    return frame[text_columns].astype(str).agg(". ".join, axis=1)


def _labels_to_dataset(text: pd.Series, raw_labels: list[str], label_column: str,
                       source: str, label_names: tuple[str, ...] | None) -> datasets.Dataset:
    if label_names is None:
        label_names = tuple(sorted(set(raw_labels), key=_label_sort_key))
        if len(label_names) < 2:
            raise ConfigError(f"label column '{label_column}' of {source} has "
                              f"{len(label_names)} distinct value(s); classification needs "
                              "at least 2")
    unknown = sorted(set(raw_labels) - set(label_names))
    if unknown:
        raise ConfigError(f"{source} has labels {unknown[:5]} that the run does not know; "
                          f"its labels are: {', '.join(label_names)}")
    index = {value: i for i, value in enumerate(label_names)}
    features = datasets.Features({
        "text": datasets.Value("string"),
        "label": datasets.ClassLabel(names=list(label_names)),
    })
    return datasets.Dataset.from_dict(
        {"text": text.tolist(), "label": [index[v] for v in raw_labels]}, features=features)


def _label_sort_key(value: object) -> tuple[int, float, str]:
    try:
        return (0, float(value), "")  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return (1, 0.0, str(value))
