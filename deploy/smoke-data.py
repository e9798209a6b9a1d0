"""The smoke test's AG News files: the server's test file and each node's own, disjoint.

    python3 deploy/smoke-data.py AG_NEWS_CSV OUT_DIR

AG_NEWS_CSV has rows (class 1-4, title, description) without a header. Written, as
label,text tables of 400 rows each, shuffled with seed 0: OUT_DIR/server.csv,
OUT_DIR/node-1/alice.csv and OUT_DIR/node-2/bob.csv. Standard library only: it runs on
the host, outside the image. bench/deployment.py uses the same files."""

import csv
import pathlib
import random
import sys

NAMES = {"1": "World", "2": "Sports", "3": "Business", "4": "Sci/Tech"}
ROWS_PER_FILE = 400
FILES = ("server.csv", "node-1/alice.csv", "node-2/bob.csv")


def write(ag_news: str, out: str) -> None:
    with open(ag_news, encoding="utf-8") as source:
        rows = [(NAMES[r[0]], f"{r[1]} {r[2]}") for r in csv.reader(source)]
    random.Random(0).shuffle(rows)
    for i, name in enumerate(FILES):
        path = pathlib.Path(out) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="", encoding="utf-8") as target:
            csv.writer(target).writerows(
                [("label", "text"), *rows[i * ROWS_PER_FILE:(i + 1) * ROWS_PER_FILE]])


if __name__ == "__main__":
    write(*sys.argv[1:3])
