"""A machine's own disk cache of what every message would otherwise rebuild.

In a deployment, Flower 1.39 runs each message in a fresh ClientApp process, so nothing
survives in memory from one message to the next. Two things are worth keeping on the
node's disk (``POLLEN_CACHE_DIR``, default ``~/.cache/pollen``):

- ``gguf/``: a GGUF checkpoint converted once into a transformers folder (float32
  safetensors, memory-mapped when loaded, and its tokenizer; 542 MB for SmolLM2).
  ``python -m bench.llm gguf-cache`` on 2 cores: SmolLM2 from its GGUF file 17.0 s
  (model) and 4.2 s (tokenizer); from the copy 0.3 s and 0.1 s; the first use, converting
  both, 28.2 s.
- ``splits/``: a client's train and test splits as the trainer takes them (partitioned,
  tokenised, torch format), saved with ``datasets``' ``save_to_disk`` (Arrow,
  memory-mapped by ``load_from_disk``). Partitioning imports flwr-datasets (about 2 s,
  its plotting helpers included) and tokenising repeats the same work every message.

An entry is written to a temporary folder and renamed into place, so a reader never sees
half of one; when two processes build the same entry, the first rename wins. Keys change
whenever an input does (the GGUF file's size and mtime; for splits, the whole run config,
the data file's size and mtime, and the source of the modules that shape the data), so
an entry is never stale; nothing is evicted (``rm -r`` the folder to reclaim it).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported where used: pollen.models needs only the GGUF half
    import datasets

CACHE_ENV = "POLLEN_CACHE_DIR"
_DATA_MODULES = ("data.py", "tables.py", "training.py", "instruct.py", "models.py")


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "pollen")


def _publish(build: Callable[..., None], target: Path, *args: object) -> Path:
    """``build(folder, *args)`` fills a temporary folder, which then becomes ``target``."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(dir=target.parent, prefix=".partial-"))
    try:
        build(partial, *args)
        os.rename(partial, target)
    except OSError:
        if not target.is_dir():  # not a lost race: a real failure
            raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return target


def gguf_as_transformers(path: Path, part: str) -> Path:
    """The transformers folder of the GGUF file ``path``'s ``part`` ("model" or
    "tokenizer", kept apart: many runs need only the tokenizer), made on first use."""
    stat = path.stat()
    target = cache_root() / "gguf" / f"{path.stem}-{stat.st_size}-{stat.st_mtime_ns}" / part
    if any(target.glob("*.json")):
        return target
    return _publish(_save_model if part == "model" else _save_tokenizer, target, path)


def _save_tokenizer(folder: Path, path: Path) -> None:
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name).save_pretrained(folder)


def _save_model(folder: Path, path: Path) -> None:
    """The dequantised float32 weights and the config. transformers refuses to
    ``save_pretrained`` a model loaded from GGUF (it counts as quantised), so the weights
    go through safetensors' ``save_model`` (which stores tied tensors once) and the
    config loses its GGUF quantisation entry: the copy is a plain float32 checkpoint."""
    from safetensors.torch import save_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name)
    save_model(model, str(folder / "model.safetensors"), metadata={"format": "pt"})
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.save_pretrained(folder)


@functools.cache
def _data_code_digest() -> str:
    """The source of the modules whose code shapes a client's splits."""
    here = Path(__file__).parent
    digest = hashlib.sha256()
    for name in _DATA_MODULES:
        digest.update((here / name).read_bytes())
    return digest.hexdigest()


def split_key(*parts: object, data_path: str | None = None) -> str:
    """A key for the splits made from ``parts`` (reprs; a frozen RunConfig's is all its
    fields) and the file ``data_path``, as it is now."""
    stat = os.stat(data_path) if data_path is not None else None
    text = repr((parts, data_path, stat and (stat.st_size, stat.st_mtime_ns),
                 _data_code_digest()))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def cached_splits(key: str, build: Callable[[], tuple[dict[str, datasets.Dataset], dict]]
                  ) -> tuple[dict[str, datasets.Dataset], dict]:
    """``build()``'s named datasets and JSON-able facts, built once per key on this
    machine and read back from disk after that."""
    target = cache_root() / "splits" / key
    if not (target / "facts.json").is_file():
        splits, facts = build()

        def save(folder: Path) -> None:
            for name, split in splits.items():
                split.save_to_disk(str(folder / name))
            (folder / "facts.json").write_text(json.dumps({"splits": list(splits), **facts}))

        _publish(save, target)
        return splits, facts
    import datasets

    facts = json.loads((target / "facts.json").read_text())
    names = facts.pop("splits")
    return {name: datasets.load_from_disk(str(target / name)) for name in names}, facts
