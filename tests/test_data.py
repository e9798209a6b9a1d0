import json

import numpy as np
import pytest

from pollen.config import ConfigError, RunConfig
from pollen.data import check_enough_examples, client_split, load_task


def test_ag_news_loads_as_four_classes(ag_news):
    task = load_task(RunConfig(dataset=str(ag_news), model="minilm"))
    assert task.modality == "text"
    assert task.label_names == ("1", "2", "3", "4")
    assert len(task.pool) + len(task.server_test) == 7600
    first = task.server_test[0]
    assert set(first) == {"text", "label"} and 0 <= first["label"] <= 3
    # title and description are joined
    assert ". " in first["text"]


def test_digits_server_split_is_stratified():
    config = RunConfig()
    task = load_task(config)
    assert task.num_classes == 10 and len(task.pool) + len(task.server_test) == 1797
    assert len(task.server_test) == 360
    counts = np.bincount(task.server_test["label"], minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37  # stratified: 20% of each class


@pytest.mark.parametrize("partitioner", ["iid", "dirichlet", "pathological"])
def test_partitions_cover_the_pool_without_overlap(partitioner):
    config = RunConfig(partitioner=partitioner, dirichlet_alpha=0.3, pathological_classes=2)
    task = load_task(config)
    sizes, labels_per_client = [], []
    for pid in range(10):
        train, test = client_split(task, config, pid, 10)
        sizes.append(len(train) + len(test))
        labels_per_client.append(set(train["label"]) | set(test["label"]))
    assert sum(sizes) == len(task.pool)
    if partitioner == "pathological":
        assert all(len(labels) <= 2 for labels in labels_per_client)
    if partitioner == "iid":
        assert max(sizes) - min(sizes) <= 1


def test_split_is_a_pure_function_of_the_config():
    config = RunConfig(partitioner="dirichlet", dirichlet_alpha=0.1)
    a_train, a_test = client_split(load_task(config), config, 3, 10)
    from pollen import data

    data._load_task.cache_clear()
    b_train, b_test = client_split(load_task(config), config, 3, 10)
    assert list(a_train["label"]) == list(b_train["label"])
    assert list(a_test["label"]) == list(b_test["label"])
    assert np.array_equal(np.array(list(a_train["pixels"])), np.array(list(b_train["pixels"])))


def test_headed_csv_jsonl_and_parquet_with_named_columns(tmp_path):
    import pandas as pd

    frame = pd.DataFrame({"topic": ["a", "b", "c"] * 10,
                          "title": [f"t{i}" for i in range(30)],
                          "body": [f"body {i}" for i in range(30)]})
    frame.to_csv(tmp_path / "x.csv", index=False)
    frame.to_json(tmp_path / "x.jsonl", orient="records", lines=True)
    frame.to_parquet(tmp_path / "x.parquet")
    for suffix in ("csv", "jsonl", "parquet"):
        config = RunConfig(dataset=str(tmp_path / f"x.{suffix}"), model="tiny-bert",
                           label_column="topic", text_column="body")
        task = load_task(config)
        assert task.label_names == ("a", "b", "c")
        texts = list(task.pool["text"]) + list(task.server_test["text"])
        assert sorted(texts) == sorted(frame["body"])


def test_tsv_without_text_column_joins_all_other_columns(tmp_path):
    (tmp_path / "x.tsv").write_text("label\ttitle\tbody\n" + "".join(
        f"{i % 2}\ttitle{i}\tbody{i}\n" for i in range(20)))
    task = load_task(RunConfig(dataset=str(tmp_path / "x.tsv"), model="tiny-bert"))
    assert "title3. body3" in list(task.pool["text"]) + list(task.server_test["text"])


def test_missing_label_column_is_named(tmp_path):
    (tmp_path / "x.jsonl").write_text("".join(json.dumps({"text": "hi", "y": i % 2}) + "\n"
                                              for i in range(10)))
    with pytest.raises(ConfigError, match="label column 'label' not found.*text, y"):
        load_task(RunConfig(dataset=str(tmp_path / "x.jsonl"), model="tiny-bert"))


def test_missing_text_column_is_named(topics_csv):
    with pytest.raises(ConfigError, match="text column\\(s\\) body not found"):
        load_task(RunConfig(dataset=str(topics_csv), model="tiny-bert", text_column="body"))


def test_fewer_examples_than_clients_is_an_error(topics_csv):
    task = load_task(RunConfig(dataset=str(topics_csv), model="tiny-bert"))
    with pytest.raises(ConfigError, match="320 examples for 500 clients"):
        check_enough_examples(task, 500)


def test_an_unreachable_hub_dataset_is_a_config_error():
    with pytest.raises(ConfigError, match="dataset 'hf:pollen-test/absent' could not be loaded"):
        load_task(RunConfig(dataset="hf:pollen-test/absent", model="tiny-bert"))


def test_an_unreachable_hub_model_is_a_config_error():
    from pollen.models import build_backbone

    with pytest.raises(ConfigError, match="model 'hf:pollen-test/absent' could not be loaded"):
        build_backbone("hf:pollen-test/absent", 2, seed=0)


def _sites_table(tmp_path, suffix="jsonl"):
    """Three hospitals (site), two labels, site names not in sorted order of rows."""
    import pandas as pd

    sites = ["north", "east", "west"]
    frame = pd.DataFrame({"site": [sites[i % 3] for i in range(60)],
                          "label": [i % 2 for i in range(60)],
                          "note": [f"note {i}" for i in range(60)]})
    path = tmp_path / f"sites.{suffix}"
    frame.to_json(path, orient="records", lines=True)
    return path, frame


def test_natural_id_gives_each_value_of_the_partition_column_one_client(tmp_path):
    path, frame = _sites_table(tmp_path)
    config = RunConfig(dataset=str(path), model="tiny-bert", partitioner="natural-id",
                       partition_column="site")
    task = load_task(config)
    assert "site" not in " ".join(task.pool["text"])  # not a text column
    by_note = dict(zip(frame["note"], frame["site"]))
    seen = []
    for pid, site in enumerate(["east", "north", "west"]):  # sorted values
        train, test = client_split(task, config, pid, 3)
        texts = list(train["text"]) + list(test["text"])
        assert {by_note[t] for t in texts} == {site}
        seen += texts
    assert sorted(seen) == sorted(task.pool["text"])
    with pytest.raises(ConfigError, match="3 distinct value\\(s\\).*federation has 4 clients"):
        client_split(task, config, 0, 4)


def test_natural_id_works_for_instruction_tuning_and_its_column_is_checked(tmp_path):
    path, frame = _sites_table(tmp_path)
    config = RunConfig(dataset=str(path), model="tiny-llama", task="instruct",
                       partitioner="natural-id", partition_column="site", max_seq_len=96)
    train, test = client_split(load_task(config), config, 2, 3)
    notes = {row["prompt"].split("note ")[-1].split()[0] for row in [*train, *test]}
    assert {frame["site"][int(n.rstrip(".:"))] for n in notes} == {"west"}
    with pytest.raises(ConfigError, match="partition-column 'ward' not found.*site"):
        load_task(config.replace(partition_column="ward"))
    with pytest.raises(ConfigError, match="partitioner 'natural-id' and partition-column go"):
        RunConfig(partitioner="natural-id")
    with pytest.raises(ConfigError, match="partition-column go together"):
        RunConfig(partition_column="site")


def test_a_dirichlet_split_that_cannot_be_drawn_names_the_keys_to_change():
    """flwr-datasets gives up after 10 draws; the error says which keys to change."""
    config = RunConfig(dirichlet_alpha=0.001, seed=6)
    with pytest.raises(ConfigError, match=r"dirichlet-alpha 0.001 over 10 classes and 60 "
                                          r"clients: in 10 draws \(seed 6\).*raise "
                                          "dirichlet-alpha, run fewer clients"):
        client_split(load_task(config), config, 0, 60)
