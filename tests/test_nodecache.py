"""pollen.nodecache: what a node keeps on disk between messages (fresh processes)."""

from __future__ import annotations

import os
from pathlib import Path

import datasets
import pytest
import torch

from client_app import job
from pollen.config import RunConfig
from pollen.nodecache import CACHE_ENV, cached_splits, gguf_as_transformers, split_key


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_splits_are_built_once_and_read_back_the_same(cache):
    builds = []

    def build():
        builds.append(1)
        split = datasets.Dataset.from_dict({"x": [[1.0, 2.0], [3.0, 4.0]], "label": [0, 1]})
        return {"train": split.with_format("torch", columns=["x", "label"])}, {"n": 2}

    first, facts = cached_splits("k", build)
    again, facts_again = cached_splits("k", build)
    assert builds == [1] and facts == facts_again == {"n": 2}
    assert torch.equal(again["train"][:]["x"], torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
    assert again["train"].format["type"] == "torch"
    assert not list(cache.glob("splits/.partial-*"))  # nothing half-written is left


def test_a_changed_data_file_is_a_new_key(tmp_path, cache):
    data = tmp_path / "mine.csv"
    data.write_text("label,text\na,x\n")
    key = split_key(RunConfig(), None, data_path=str(data))
    assert split_key(RunConfig(), None, data_path=str(data)) == key
    data.write_text("label,text\na,x\nb,y\n")
    os.utime(data, ns=(1, 1))
    assert split_key(RunConfig(), None, data_path=str(data)) != key
    assert split_key(RunConfig(seed=1), None, data_path=str(data)) != split_key(
        RunConfig(), None, data_path=str(data))


def test_a_fresh_process_reads_the_clients_splits_from_disk(topics_csv, cache):
    config = RunConfig(model="tiny-bert", dataset=str(topics_csv), max_seq_len=16)
    built = job.client_data(config, (0, 2), None, (), "tiny-bert")
    job.client_data.cache_clear()  # as in a new process
    assert list(cache.glob("splits/*/facts.json"))
    read = job.client_data(config, (0, 2), None, (), "tiny-bert")
    assert (read.num_classes, read.modality) == (built.num_classes, built.modality)
    for name in ("train", "test"):
        a, b = getattr(built, name)[:], getattr(read, name)[:]
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_the_gguf_copy_is_the_same_tokenizer_and_model(cache):
    """SmolLM2 read from its GGUF file and from the cache's transformers copy."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pollen.models import gguf_file

    path = gguf_file("smollm2")
    text = "The capital of France is"
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    copied = AutoTokenizer.from_pretrained(gguf_as_transformers(path, "tokenizer"))
    assert copied(text)["input_ids"] == tokenizer(text)["input_ids"]
    chat = [{"role": "user", "content": text}]
    assert copied.apply_chat_template(chat, tokenize=False) == \
        tokenizer.apply_chat_template(chat, tokenize=False)
    ids = torch.tensor([tokenizer(text)["input_ids"]])
    with torch.no_grad():
        expected = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name)(ids).logits
        folder = gguf_as_transformers(path, "model")
        assert gguf_as_transformers(path, "model") == folder  # made once
        got = AutoModelForCausalLM.from_pretrained(folder)(ids).logits
    assert torch.equal(got, expected)


@pytest.mark.slow
def test_a_fresh_digits_client_imports_neither_peft_nor_the_partitioners(tmp_path):
    """What a deployed digits message costs in imports: the CNN's tensors are loaded
    without peft (3 s), and with its split cached no flwr-datasets (2 s) or sklearn."""
    import subprocess
    import sys

    script = (
        "import sys\n"
        "import client_app.app\n"
        "from pollen.adapters import load_travelling_state, travelling_state\n"
        "from pollen.config import RunConfig\n"
        "from pollen.models import build_model\n"
        "print(sorted(m for m in ('peft', 'flwr_datasets', 'sklearn') if m in sys.modules))\n"
        "model = build_model(RunConfig(), 10)\n"
        "load_travelling_state(model, travelling_state(model))\n"
        "print('peft' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, cwd=str(Path(job.__file__).parents[1]))
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split("\n")[:2] == ["[]", "False"]
