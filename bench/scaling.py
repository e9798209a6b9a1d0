"""Simulation scaling: seconds per round and peak memory for 10, 50 and 100 virtual
clients in Flower's simulation engine (Ray, one CPU per client).

    python -m bench scaling [--quick]

The job: digits, the CNN, IID split, FedAvg, 3 rounds, every client trains and
evaluates each round. Peak RSS is the largest sum, sampled every 0.2 s, of the resident
memory of this process and all its descendants (Ray's GCS, raylet and workers). Round 1
includes Ray's workers importing torch, so the steady state is the mean of the later
rounds. --quick: 4 and 8 clients, 2 rounds. Expected duration on 2 CPU cores: about
4 minutes; --quick 1.5.
"""

from __future__ import annotations

import threading
from pathlib import Path

import psutil

from bench.common import pyplot, save_plot, simulate, write_report
from pollen.progress import Progress

JOB = {"dataset": "digits", "model": "cnn", "partitioner": "iid", "strategy": "fedavg",
       "local-epochs": 1, "seed": 42}


class PeakRss:
    """The largest summed RSS of this process tree while the block runs."""

    def __init__(self, interval: float = 0.2) -> None:
        self.interval, self.peak = interval, 0
        self._stop = threading.Event()

    def _sample(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            for process in [me, *me.children(recursive=True)]:
                try:
                    total += process.memory_info().rss
                except psutil.Error:  # exited between listing and reading
                    pass
            self.peak = max(self.peak, total)
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakRss:
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def run(quick: bool, out_dir: Path) -> Path:
    counts, rounds = ((4, 8), 2) if quick else ((10, 50, 100), 3)
    progress = Progress(len(counts), "scaling")
    results = []
    for n in counts:
        with PeakRss() as memory:
            _, rows, seconds = simulate({**JOB, "num-server-rounds": rounds}, n,
                                        f"scaling-{n}")
        results.append((n, rows, seconds, memory.peak))
        print(progress.step(f"{n} clients: {seconds:.0f} s, peak RSS "
                            f"{memory.peak / 2**20:.0f} MiB"), flush=True)
    lines = [f"digits CNN, FedAvg, IID, {rounds} rounds, every client trains and evaluates.", "",
             "| clients | round 1 s | later rounds s (mean) | s per client per round | "
             "peak RSS MiB (process tree) | run wall s (incl. Ray start) | final accuracy |",
             "|---|---|---|---|---|---|---|"]
    for n, rows, seconds, peak in results:
        later = [r["round_seconds"] for r in rows[1:]]
        steady = sum(later) / len(later)
        lines.append(f"| {n} | {rows[0]['round_seconds']:.1f} | {steady:.1f} | "
                     f"{steady / n:.3f} | {peak / 2**20:.0f} | {seconds:.0f} | "
                     f"{rows[-1]['eval_accuracy']:.4f} |")
    plt = pyplot()
    figure, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5))
    left.plot([n for n, *_ in results],
              [sum(r["round_seconds"] for r in rows[1:]) / len(rows[1:])
               for _, rows, _, _ in results], marker="o")
    left.set(xlabel="virtual clients", ylabel="seconds per round (after round 1)")
    right.plot([n for n, *_ in results], [p / 2**20 for *_, p in results], marker="o")
    right.set(xlabel="virtual clients", ylabel="peak RSS of the process tree (MiB)")
    name = "scaling-quick" if quick else "scaling"
    lines += ["", save_plot(figure, out_dir, name)]
    return write_report(name, "Simulation scaling", f"python -m bench scaling"
                        f"{' --quick' if quick else ''}", "\n".join(lines), out_dir)
