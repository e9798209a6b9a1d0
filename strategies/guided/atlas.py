"""The model atlas of guided merging: a bounded buffer of client updates with round stamps.

An entry is client k's update a_k = w_k - w_tau(k), stamped with tau(k), the index of the
global model it started from (global 0 is the initial model; the global sent in round r
is global r-1). Rules (../shared/docs/methods.md §1):

- admission: non-finite updates never enter, nor do all-zero ones (no direction to
  normalise). A client's new update replaces its previous entry (our choice: one entry
  per client, so a client that trains every round is not counted several times).
- capacity: at most ``size`` entries; beyond that the oldest stamps leave first.
- staleness: merging onto global g keeps entries with g - tau <= ``max_staleness``.
- low quality: an entry whose coefficient was <= 0 in ``patience`` consecutive searches
  leaves (with per-tensor coefficients: all of its coefficients <= 0).

Every departure is returned as ``{"client", "round", "reason"}`` for the metrics row.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from strategies.base import prefixed, unprefixed

Tensors = dict[str, np.ndarray]


@dataclass
class AtlasEntry:
    client_id: str
    round: int  # tau: the global model this update started from
    num_examples: int
    update: Tensors
    nonpositive_searches: int = 0

    def describe(self, reason: str) -> dict:
        return {"client": self.client_id, "round": self.round, "reason": reason}


@dataclass
class ModelAtlas:
    size: int
    max_staleness: int
    patience: int
    entries: list[AtlasEntry] = field(default_factory=list)

    def admit(self, entry: AtlasEntry) -> list[dict]:
        """Add an entry; what was refused or pushed out."""
        if not all(np.isfinite(t).all() for t in entry.update.values()):
            return [entry.describe("non-finite update refused")]
        if not any(np.any(t) for t in entry.update.values()):
            return [entry.describe("all-zero update refused")]
        departed = [e.describe("replaced by the client's newer update")
                    for e in self.entries if e.client_id == entry.client_id]
        self.entries = [e for e in self.entries if e.client_id != entry.client_id] + [entry]
        while len(self.entries) > self.size:
            oldest = min(range(len(self.entries)), key=lambda i: self.entries[i].round)
            departed.append(self.entries.pop(oldest).describe(f"atlas full (size {self.size})"))
        return departed

    def drop_stale(self, global_round: int) -> list[dict]:
        """Before merging onto global ``global_round``: drop entries older than S rounds."""
        stale = [e for e in self.entries if global_round - e.round > self.max_staleness]
        self.entries = [e for e in self.entries if e not in stale]
        return [e.describe(f"stale ({global_round - e.round} rounds > max-staleness "
                           f"{self.max_staleness})") for e in stale]

    def record_search(self, coefficients: np.ndarray) -> list[dict]:
        """Count, per entry, consecutive searches with coefficient(s) <= 0; evict at
        ``patience``. ``coefficients`` has one row (or value) per entry, in entry order."""
        rows = np.asarray(coefficients).reshape(len(self.entries), -1)
        evicted = []
        for entry, row in zip(list(self.entries), rows, strict=True):
            entry.nonpositive_searches = entry.nonpositive_searches + 1 if np.all(row <= 0) else 0
            if entry.nonpositive_searches >= self.patience:
                self.entries.remove(entry)
                evicted.append(entry.describe(f"coefficient <= 0 in {self.patience} "
                                              "consecutive searches"))
        return evicted

    def state(self) -> tuple[Tensors, list[dict]]:
        tensors = {}
        for i, entry in enumerate(self.entries):
            tensors.update(prefixed(entry.update, f"atlas/{i}/"))
        meta = [{"client": e.client_id, "round": e.round, "num_examples": e.num_examples,
                 "nonpositive_searches": e.nonpositive_searches} for e in self.entries]
        return tensors, meta

    def load(self, tensors: Tensors, meta: list[dict]) -> None:
        self.entries = []
        for i, about in enumerate(meta):
            self.entries.append(AtlasEntry(about["client"], about["round"],
                                           about["num_examples"],
                                           unprefixed(tensors, f"atlas/{i}/"),
                                           about["nonpositive_searches"]))
