from __future__ import annotations

import logging
import os

# Tests never touch the network: the Hugging Face libraries read these at import time.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# The node cache (pollen.nodecache) of this test session, for every process it starts.
if "POLLEN_CACHE_DIR" not in os.environ:
    import atexit
    import shutil
    import tempfile

    os.environ["POLLEN_CACHE_DIR"] = tempfile.mkdtemp(prefix="pollen-test-cache-")
    atexit.register(shutil.rmtree, os.environ["POLLEN_CACHE_DIR"], ignore_errors=True)

import random  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared"
AG_NEWS = SHARED / "data" / "ag_news" / "test.csv"

TOPICS = {
    "sport": "match goal team league coach player season score stadium",
    "money": "bank market stock price profit shares investor trade bond",
    "space": "rocket orbit planet nasa launch satellite moon astronaut star",
    "music": "band album song concert guitar singer tour chart record",
}


@pytest.fixture(scope="session")
def topics_csv(tmp_path_factory) -> Path:
    """A small headed text file: 4 topics with disjoint vocabularies, 400 rows."""
    rng = random.Random(0)
    rows = ["label,text"]
    for i in range(400):
        label = list(TOPICS)[i % 4]
        words = TOPICS[label].split()
        rows.append(f"{label},{' '.join(rng.choice(words) for _ in range(8))}")
    path = tmp_path_factory.mktemp("data") / "topics.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.fixture(scope="session")
def ag_news() -> Path:
    if not AG_NEWS.is_file():
        pytest.skip(f"{AG_NEWS} is not present")
    return AG_NEWS


@pytest.fixture
def flwr_warnings():
    """WARNING lines of Flower's logger (it does not propagate to the root logger)."""
    lines: list[str] = []
    handler = logging.Handler(level=logging.WARNING)
    handler.emit = lambda record: lines.append(record.getMessage())
    logging.getLogger("flwr").addHandler(handler)
    yield lines
    logging.getLogger("flwr").removeHandler(handler)
