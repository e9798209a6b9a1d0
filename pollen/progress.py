"""Progress of long runs: one line per finished step with elapsed time and an ETA (the
mean step so far times the steps left). Used by the server's round loop and by bench."""

from __future__ import annotations

import time


class Progress:
    def __init__(self, total: int, what: str) -> None:
        self.total, self.what, self.done = total, what, 0
        self.started = time.perf_counter()

    def step(self, label: str = "") -> str:
        """Count one finished step; the line to print or log."""
        self.done += 1
        elapsed = time.perf_counter() - self.started
        eta = elapsed / self.done * (self.total - self.done)
        return (f"[{self.what} {self.done}/{self.total}]{' ' + label if label else ''} | "
                f"elapsed {clock(elapsed)}, ETA {clock(eta)}")


def clock(seconds: float) -> str:
    minutes, seconds = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{seconds:02d}s" if hours else f"{minutes}m{seconds:02d}s"
