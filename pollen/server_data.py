"""D_s, the data the server holds in the hybrid setting (guided merging, central baseline).

Where it comes from (``server-data``):
- ``""``: the stratified ``server-data-fraction`` share of the training pool that
  ``pollen.data.load_task`` held out before partitioning (in domain).
- ``digits-shifted``: the same examples, each rotated by ``server-data-rotation`` degrees
  (30 by default) and given Gaussian pixel noise (sigma 0.1, seeded, clipped to [0, 1]):
  out of domain, same labels.
  With ``server-data-fraction`` and no file, the clients' data is identical to the
  in-domain run's, so the two settings differ only in what the server holds.
- a path to a table file (text datasets): the file, read like the dataset's own files. It
  is labeled when it has the label column (labels must be among the run's classes) and
  unlabeled otherwise (a .csv/.tsv then needs a header row naming its text column).
  With ``task = instruct`` it becomes (prompt, response) pairs like the dataset (its
  responses are its labels).

``server-data-labeled`` says which loss the server uses on D_s: cross-entropy (true) or
entropy minimisation (false); true with an unlabeled file is an error. D_s is split into
the part the server optimises on (``search``) and ``server-data-holdout`` held out for the
guided strategy's fallback check.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import datasets
import numpy as np

from pollen.config import DIGITS_SHIFTED, ConfigError, RunConfig
from pollen.data import TaskData
from pollen.tables import normalise_table, read_own_table, read_table, text_of
from pollen.seeding import derive_seed

UNLABELED = -1  # label value of every example of an unlabeled server set
SHIFT_NOISE = 0.1


@dataclass(frozen=True)
class ServerData:
    search: datasets.Dataset  # raw columns (pixels or text) and label
    holdout: datasets.Dataset
    labeled: bool  # whether the server's loss uses the labels
    source: str

    def __len__(self) -> int:
        return len(self.search) + len(self.holdout)


def load_server_data(config: RunConfig, task: TaskData) -> ServerData:
    return _load_server_data(config, task)


@functools.lru_cache(maxsize=2)
def _load_server_data(config: RunConfig, task: TaskData) -> ServerData:
    if not config.has_server_data:
        raise ConfigError("this run holds no server data: set server-data-fraction in (0, 1) "
                          "or server-data to a file")
    file = config.server_data_file
    if file is not None and task.modality == "instruct":
        table, source, has_labels = read_own_table(file, config, task.label_names)[0], \
            str(file), True
    elif file is not None:
        if task.modality != "text":
            raise ConfigError(f"server-data file {file} holds text but dataset "
                              f"'{config.dataset}' holds {task.modality} examples")
        table, source = _file_table(config, task, file), str(file)
        has_labels = isinstance(table.features["label"], datasets.ClassLabel)
    else:
        table, has_labels = task.server_held, True
        source = f"{config.server_data_fraction:g} of the pool"
        if config.server_data == DIGITS_SHIFTED:
            table = _shifted_digits(table, config.server_data_rotation, config.seed)
            source = f"{source}, {DIGITS_SHIFTED} ({config.server_data_rotation:g} degrees)"
    if config.server_data_labeled and not has_labels:
        raise ConfigError(f"server-data {source} has no label column "
                          f"'{config.label_column}' but server-data-labeled = true; set it "
                          "to false for entropy minimisation on unlabeled data")
    held = round(config.server_data_holdout * len(table))
    if len(table) < 2 or held < 1 or held >= len(table):
        raise ConfigError(f"server data ({source}) holds {len(table)} example(s): too few to "
                          f"keep server-data-holdout = {config.server_data_holdout:g} of them "
                          "for the fallback check and search on the rest")
    split = table.train_test_split(test_size=held, seed=derive_seed(config.seed, "server-data"))
    return ServerData(split["train"], split["test"], config.server_data_labeled, source)


def _file_table(config: RunConfig, task: TaskData, file) -> datasets.Dataset:
    text_names = tuple(c.strip() for c in config.text_column.split(",") if c.strip())
    frame = read_table(file, config.label_column, header_names=text_names or ("text",))
    frame.columns = [str(c) for c in frame.columns]
    if config.label_column in frame.columns:
        return normalise_table(frame, config.text_column, config.label_column, str(file),
                          task.label_names)
    text = text_of(frame, config.text_column, config.label_column, str(file))
    return datasets.Dataset.from_dict(
        {"text": text.tolist(), "label": [UNLABELED] * len(text)},
        features=datasets.Features({"text": datasets.Value("string"),
                                    "label": datasets.Value("int64")}))


def _shifted_digits(table: datasets.Dataset, degrees: float, seed: int) -> datasets.Dataset:
    """Rotated, noisy copies of 8x8 digits (pixels in [0, 1])."""
    from scipy.ndimage import rotate

    images = np.asarray(table["pixels"], dtype=np.float32).reshape(-1, 8, 8)
    rotated = rotate(images, degrees, axes=(1, 2), reshape=False, order=1, mode="constant")
    noise = np.random.default_rng(derive_seed(seed, "digits-shifted")).normal(
        0.0, SHIFT_NOISE, size=rotated.shape)
    shifted = np.clip(rotated + noise, 0.0, 1.0).astype(np.float32).reshape(-1, 64)
    return table.remove_columns("pixels").add_column(
        "pixels", shifted.tolist(), feature=table.features["pixels"])
