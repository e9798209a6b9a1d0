"""Checkpoints: everything needed to continue a run after the server process dies.

``<run>/checkpoints/round-<N>/`` holds ``strategy.safetensors`` (the strategy's tensors
and torch's RNG state) and ``state.json`` (the round, the strategy's other state, the
Python and numpy RNG states, how many lines each JSON-lines output had, and the sha256
of the tensor file). It is written under a temporary name, every file and the folder
fsynced, then renamed: a folder called ``round-<N>`` is complete. Reading also checks the
hash, so a damaged checkpoint is skipped for the previous one, never loaded.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from dataclasses import dataclass
from logging import WARNING
from pathlib import Path

import numpy as np
import torch
from flwr.common.logger import log
from safetensors.numpy import load_file, save_file

from strategies.base import PollenStrategy, StrategyState

FORMAT = 1
TENSORS, STATE = "strategy.safetensors", "state.json"
TORCH_RNG = "rng/torch"


@dataclass(frozen=True)
class Checkpoint:
    server_round: int
    strategy_state: StrategyState
    output_lines: dict[str, int]  # JSON-lines file name -> lines at checkpoint time
    rng: dict  # Python's and numpy's RNG states
    torch_rng: np.ndarray
    path: Path


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def save_checkpoint(run_dir: Path, server_round: int, strategy: PollenStrategy,
                    keep: int) -> Path:
    root = run_dir / "checkpoints"
    root.mkdir(exist_ok=True)
    partial = root / f".round-{server_round}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    state = strategy.state_dict()
    tensors = {k: np.ascontiguousarray(v) for k, v in state["tensors"].items()}
    tensors[TORCH_RNG] = torch.get_rng_state().numpy()
    save_file(tensors, partial / TENSORS)
    numpy_state = np.random.get_state()
    document = {
        "format": FORMAT,
        "round": server_round,
        "strategy_meta": state["meta"],
        "rng": {"python": _jsonable(random.getstate()),
                "numpy": [numpy_state[0], numpy_state[1].tolist(), *numpy_state[2:]]},
        "output_lines": {p.name: len(p.read_text().splitlines())
                         for p in sorted(run_dir.glob("*.jsonl"))},
        "tensors_sha256": _sha256(partial / TENSORS),
    }
    (partial / STATE).write_text(json.dumps(document))
    for path in (partial / TENSORS, partial / STATE, partial):
        _fsync(path)
    final = root / f"round-{server_round}"
    shutil.rmtree(final, ignore_errors=True)
    os.rename(partial, final)
    _fsync(root)
    for old in sorted(_complete(root), key=_round_of)[:-keep]:
        shutil.rmtree(old)
    return final


def latest_checkpoint(run_dir: Path) -> Checkpoint | None:
    """The newest checkpoint that reads back intact; damaged ones are skipped, loudly."""
    root = run_dir / "checkpoints"
    for path in sorted(_complete(root), key=_round_of, reverse=True):
        try:
            return _read(path)
        except (OSError, ValueError, KeyError) as error:
            log(WARNING, "skipping damaged checkpoint %s: %s", path, error)
    return None


def restore_rng(checkpoint: Checkpoint) -> None:
    random.setstate(_tupled(checkpoint.rng["python"]))
    name, keys, *rest = checkpoint.rng["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), *rest))
    torch.set_rng_state(torch.from_numpy(checkpoint.torch_rng.copy()))


def _read(path: Path) -> Checkpoint:
    document = json.loads((path / STATE).read_text())
    if document.get("format") != FORMAT:
        raise ValueError(f"unknown checkpoint format {document.get('format')}")
    if _sha256(path / TENSORS) != document["tensors_sha256"]:
        raise ValueError("tensor file does not match its recorded sha256")
    tensors = load_file(path / TENSORS)
    torch_rng = tensors.pop(TORCH_RNG)
    return Checkpoint(document["round"], {"tensors": tensors, "meta": document["strategy_meta"]},
                      document["output_lines"], document["rng"], torch_rng, path)


def _complete(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    return [p for p in root.iterdir() if p.is_dir() and p.name.startswith("round-")
            and p.name[len("round-"):].isdigit()]


def _round_of(path: Path) -> int:
    return int(path.name[len("round-"):])


def _jsonable(value):
    return [_jsonable(v) for v in value] if isinstance(value, (tuple, list)) else value


def _tupled(value):
    return tuple(_tupled(v) for v in value) if isinstance(value, list) else value
