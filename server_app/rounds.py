"""The round loop.

Flower's ``Strategy.start()`` runs the same configure/send/aggregate sequence, but it
offers no per-round hook for timing, for counting the bytes of the messages actually
sent and received, or for starting at a round other than 1 (resume). This loop calls
the strategy's own Flower hooks in the same order and records one metrics row a round.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from logging import INFO, WARNING

from flwr.app import ConfigRecord, Message
from flwr.common.logger import log
from flwr.serverapp import Grid
import torch

from pollen.config import RunConfig
from pollen.device import peak_memory_mb, peak_rss_mb, reset_peak_memory
from pollen.exchange import exchange
from pollen.metrics import ONE_CLASS_SHARE
from pollen.records import array_bytes, encode_records
from pollen.training import EvalResult
from strategies.base import PollenStrategy
from strategies.validation import REJECTED_KEY


def _valid(replies: list[Message]) -> list[Message]:
    return [m for m in replies if not m.has_error()]


def _metric(record, key: str) -> float | None:
    return None if record is None or key not in record else float(record[key])


def _failures(strategy: PollenStrategy, phase: str, sent: list[Message],
              replies: list[Message], timeout: float) -> list[str]:
    """What went wrong with each message of a phase that got no valid reply."""
    name = strategy.directory.name_of
    answered = {m.metadata.src_node_id for m in replies}
    failures = [f"{phase}: {name(m.metadata.src_node_id)} failed: {m.error.reason}"
                for m in replies if m.has_error()]
    failures += [f"{phase}: {name(m.metadata.dst_node_id)} sent no reply within {timeout:g}s"
                 for m in sent if m.metadata.dst_node_id not in answered]
    return sorted(failures)


def _mean(values: list[float | None]) -> float | None:
    """The mean of the values, or None when there are none (or any is None)."""
    if not values or any(v is None for v in values):
        return None
    return sum(values) / len(values)


def _weighted_accuracy(replies: list[Message]) -> float | None:
    """Example-weighted over the replies that report an accuracy (free-form instruct
    data has none)."""
    counts = [(int(m.content["metrics"]["num-examples"]),
               float(m.content["metrics"]["eval_accuracy"])) for m in replies
              if "eval_accuracy" in m.content["metrics"]]
    total = sum(n for n, _ in counts)
    return None if total == 0 else sum(n * a for n, a in counts) / total


# Keys of the clients' train MetricRecord that the row already carries in its own form.
# The rejected replies' count too: the row lists them (``rejections``).
_CLIENT_TRAIN_KEYS = {"train_loss", "train_seconds", "peak_memory_mb", REJECTED_KEY}
_CLIENT_EVAL_KEYS = {"eval_loss", "eval_accuracy"}


def _per_family(strategy: PollenStrategy, server_evals: dict[str, EvalResult],
                train_messages: list[Message], train_replies: list[Message],
                rejected: dict[int, str], bytes_up_of: dict[int, int]) -> dict:
    """Each family's server accuracy, bytes per client and the clients' peak memory."""
    family_of = {m.metadata.dst_node_id: strategy.directory.client_of(
        m.metadata.dst_node_id).family for m in train_messages}
    trained = [m for m in _valid(train_replies) if m.metadata.src_node_id not in rejected]
    fields: dict[str, dict] = {"family_accuracy": {f: e.accuracy for f, e in server_evals.items()},
                               "family_bytes_down_per_client": {},
                               "family_bytes_up_per_client": {},
                               "family_peak_memory_mb": {}}
    for family in server_evals:
        sent = [m for m in train_messages if family_of[m.metadata.dst_node_id] == family]
        back = [m for m in trained if family_of.get(m.metadata.src_node_id) == family]
        if sent:
            fields["family_bytes_down_per_client"][family] = (
                sum(array_bytes(m.content) for m in sent) / len(sent))
        if back:
            fields["family_bytes_up_per_client"][family] = (
                sum(bytes_up_of[m.metadata.src_node_id] for m in back) / len(back))
            peaks = [float(m.content["metrics"]["peak_memory_mb"]) for m in back
                     if "peak_memory_mb" in m.content["metrics"]]
            if peaks:
                fields["family_peak_memory_mb"][family] = max(peaks)
    return fields


SHARE = "predicted_class_max_share"


def one_class(row: dict) -> bool:
    """Whether the round's global model gave one class to at least ``ONE_CLASS_SHARE``
    of the server's test examples."""
    return row.get(SHARE) is not None and row[SHARE] >= ONE_CLASS_SHARE


def one_class_warning(rows: list[dict]) -> str:
    """What a majority-class model means and which keys change it, for ``rows`` (the
    rounds that ended with one)."""
    shares = ", ".join(f"round {r['round']}: {r[SHARE]:.0%}" for r in rows)
    return (f"the global model predicts one class for most of the server's test examples "
            f"({shares}): it has learnt the label prior, not the task, which is what "
            "strongly label-skewed clients (each holding mostly one class) do to an "
            "average of their models; its accuracy is the majority class's share. Keys to "
            "change: optimizer (sgd), lr (lower), local-epochs or max-steps (fewer local "
            "steps), fraction-train (more clients a round)")


class _Phases:
    """Each phase's seconds and the server process's peak memory during it, reset as
    the phase starts: its resident set (``pollen.device.peak_rss_mb``) and on CUDA
    torch's allocator peak too. In a simulation run in one process (the benches'
    ``run_in_process``) the clients' training and evaluation run inside the train and
    evaluate phases, so their peaks are the clients' (and, since each client resets the
    same process's peak before it trains, the train phase's is its last client's);
    deployed, they are the server's own (waiting, then decoding replies)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds: dict[str, float] = {}
        self.peak_memory_mb: dict[str, float] = {}
        self.peak_cuda_memory_mb: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        reset_peak_memory(self.device)
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = time.perf_counter() - started
            self.peak_memory_mb[name] = peak_rss_mb()
            if self.device.type == "cuda":
                self.peak_cuda_memory_mb[name] = peak_memory_mb(self.device)


def reproducible(row: dict) -> dict:
    """A metrics row without its measurements of the machine (seconds, peak memory): what
    a run at the same seed on CPU repeats exactly."""
    return {k: v for k, v in row.items() if "seconds" not in k and "memory_mb" not in k}


def run_round(grid: Grid, strategy: PollenStrategy, config: RunConfig, server_round: int,
              evaluate_global: Callable[[], dict[str, EvalResult]],
              device: torch.device) -> dict:
    """One round of training, client evaluation and server evaluation; its metrics row.

    ``evaluate_global`` evaluates the global model of each family (one, unless the
    strategy federates several backbones); the row's ``eval_loss``/``eval_accuracy`` are
    the means over families and ``family_accuracy`` gives each. As in Flower's
    ``Strategy.start()``, the strategy is handed an empty config and the arrays it holds;
    it adds the run record (the run config and the label names) to every message."""
    started = time.perf_counter()
    phases = _Phases(device)

    with phases("train"):
        train_messages = list(strategy.configure_train(
            server_round, strategy.global_arrays, ConfigRecord(), grid))
        for message in train_messages:
            encode_records(message.content, config.wire_dtype)
        train_replies = exchange(grid, train_messages, config.round_timeout)
    # As received: aggregation replaces the replies' tensors with their decoded float32 form.
    bytes_up_of = {m.metadata.src_node_id: array_bytes(m.content) for m in _valid(train_replies)}
    with phases("aggregate"):  # guided's coefficient search runs here
        _, train_metrics = strategy.aggregate_train(server_round, train_replies)
    rejected = dict(strategy.rejected)
    kept_previous_global = strategy.kept_previous_global

    eval_messages = list(strategy.configure_evaluate(
        server_round, strategy.global_arrays, ConfigRecord(), grid))
    for message in eval_messages:
        encode_records(message.content, config.wire_dtype)
    with phases("evaluate"):
        eval_replies = exchange(grid, eval_messages, config.round_timeout)
    eval_metrics = strategy.aggregate_evaluate(server_round, eval_replies)
    strategy_fields = strategy.round_metrics()  # a strategy may decide on the evaluation

    with phases("server_eval"):
        server_evals = evaluate_global()
    answered = _valid(train_replies)
    trained = [m for m in answered if m.metadata.src_node_id not in rejected]
    evaluated = _valid(eval_replies)
    trained_nodes = {m.metadata.dst_node_id for m in train_messages}
    # Optional in the message contract (strategies/base.py): a client may omit it.
    train_seconds = [float(m.content["metrics"].get("train_seconds", 0.0)) for m in trained]
    row = {
        "round": server_round,
        "strategy": config.strategy,
        "num_replies": len(trained),
        "num_failures": (len(train_messages) - len(trained))
                        + (len(eval_messages) - len(evaluated)),
        "train_loss": _metric(train_metrics, "train_loss"),
        "eval_loss": sum(e.loss for e in server_evals.values()) / len(server_evals),
        "eval_accuracy": _mean([e.accuracy for e in server_evals.values()]),
        **{f"eval_{name}": _mean([e.metrics.get(name) for e in server_evals.values()])
           for name in next(iter(server_evals.values())).metrics if name != SHARE},
        # The most one-sided family's: a family that predicts one class is reported.
        SHARE: max((e.metrics[SHARE] for e in server_evals.values() if SHARE in e.metrics),
                   default=None),
        "client_accuracy": _metric(eval_metrics, "eval_accuracy"),
        "client_loss": _metric(eval_metrics, "eval_loss"),
        "client_accuracy_per_client_mean": _mean(
            [float(m.content["metrics"]["eval_accuracy"]) for m in evaluated
             if "eval_accuracy" in m.content["metrics"]]),
        # The new global model on the local test splits of the clients that trained in
        # this round, and of those that did not (with client rotation: a forgetting measure).
        "participant_accuracy": _weighted_accuracy(
            [m for m in evaluated if m.metadata.src_node_id in trained_nodes]),
        "nonparticipant_accuracy": _weighted_accuracy(
            [m for m in evaluated if m.metadata.src_node_id not in trained_nodes]),
        "failures": _failures(strategy, "train", train_messages, train_replies,
                              config.round_timeout)
                    + _failures(strategy, "evaluate", eval_messages, eval_replies,
                                config.round_timeout),
        "rejections": sorted(rejected.values()),
        "kept_previous_global": kept_previous_global,
        "bytes_up": sum(bytes_up_of.values()),
        "bytes_down": sum(array_bytes(m.content) for m in train_messages + eval_messages),
        "client_train_seconds_sum": sum(train_seconds),
        "client_train_seconds_max": max(train_seconds, default=0.0),
        # From the round's start (train: sampling and encoding included) or from sending
        # the evaluate messages, to the phase's last reply.
        "train_phase_seconds": phases.seconds["train"],
        "aggregate_seconds": phases.seconds["aggregate"],
        "evaluate_phase_seconds": phases.seconds["evaluate"],
        "server_eval_seconds": phases.seconds["server_eval"],
        "round_seconds": time.perf_counter() - started,
        # {phase: MiB} (_Phases); the CUDA allocator's on CUDA only
        "peak_memory_mb": phases.peak_memory_mb,
        **({"peak_cuda_memory_mb": phases.peak_cuda_memory_mb}
           if phases.peak_cuda_memory_mb else {}),
    }
    if len(server_evals) > 1:
        row.update(_per_family(strategy, server_evals, train_messages, train_replies,
                               rejected, bytes_up_of))
    # Strategy-specific aggregates (e.g. FedRef's objective) go into the row as they are.
    row.update({k: float(v) for k, v in (train_metrics or {}).items()
                if k not in _CLIENT_TRAIN_KEYS})
    # Further client evaluation metrics (instruct: eval_perplexity, eval_macro_f1) as
    # client_<name>, beside the server's eval_<name>.
    row.update({("client_" + k.removeprefix("eval_") if k.startswith("eval_") else k): float(v)
                for k, v in (eval_metrics or {}).items() if k not in _CLIENT_EVAL_KEYS})
    row.update(strategy_fields)
    if one_class(row):
        log(WARNING, "%s", one_class_warning([row]))
    log(INFO, "[round %d/%d] global accuracy %s, loss %.4f (server test) | clients %s | "
        "train loss %s | %d replies, %d failures | %.1fs", server_round,
        config.num_server_rounds,
        "n/a" if row["eval_accuracy"] is None else f"{row['eval_accuracy']:.4f}",
        row["eval_loss"],
        "n/a" if row["client_accuracy"] is None else f"{row['client_accuracy']:.4f}",
        "n/a" if row["train_loss"] is None else f"{row['train_loss']:.4f}",
        row["num_replies"], row["num_failures"], row["round_seconds"])
    return row
