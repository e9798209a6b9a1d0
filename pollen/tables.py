"""Table files (.csv, .tsv, .jsonl, .parquet) and hub datasets as ``datasets.Dataset``s
for the run's task: (text, label) for classifiers; (prompt, response[, label]) pairs for
task = instruct (``pollen.instruct``); plus the partition column for natural-id splits.

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
from dataclasses import dataclass
from pathlib import Path

import datasets
import pandas as pd

from pollen import instruct
from pollen.config import ConfigError, RunConfig

DEFAULT_LABEL_COLUMN = RunConfig.label_column
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


def read_own_table(file: Path, config: RunConfig, label_names: tuple[str, ...]
                   ) -> tuple[datasets.Dataset, tuple[str, ...]]:
    """A table file other than the run's dataset (a client's ``data-path``, the server's
    ``server-data``), read like it for the run's task, its labels mapped to the run's
    ``label_names`` when there are any; nothing is partitioned, so no partition column."""
    columns = dataclasses.replace(Columns.of(config), partition="")
    return build_table(read_table(file, config.label_column, (columns.response,
                                                                columns.instruction)),
                       columns, str(file), label_names or None)


def from_hub(dataset_id: str) -> pd.DataFrame:
    """The train split of a hub dataset, fetched through flwr-datasets."""
    from flwr_datasets import FederatedDataset
    from flwr_datasets.partitioner import IidPartitioner

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
