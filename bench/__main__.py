"""One entry point for the suites that compare everything side by side.

    python -m bench <suite> [--quick] [--out DIR]

Suites: accuracy, communication, server-overhead, scaling, deployment. Each writes
``<suite>.md`` (``<suite>-quick.md`` with --quick) and its PNG plots into ``--out``
(default docs/benchmarks/) and prints its table. --quick is a smoke test that finishes in
under 5 minutes; each suite's docstring gives the full mode's expected duration. The
method-specific studies keep their own modules: ``python -m bench.<method> ...``.
"""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path

from bench.common import DOCS

SUITES = {"accuracy": "bench.accuracy", "communication": "bench.communication",
          "server-overhead": "bench.overhead", "scaling": "bench.scaling",
          "deployment": "bench.deployment"}


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("suite", choices=SUITES)
    parser.add_argument("--quick", action="store_true", help="a smoke run, under 5 minutes")
    parser.add_argument("--out", type=Path, default=DOCS, help="folder for the report and plots")
    args = parser.parse_args(argv)
    return importlib.import_module(SUITES[args.suite]).run(args.quick, args.out)


if __name__ == "__main__":
    main()
