"""The ClientApp: answers the server's describe query, trains, and evaluates.

What a method adds to training (a proximal anchor, extra reply records and metrics) is
its client half, ``strategies/<method>/client.py``, looked up by the run's strategy.
A strategy that wants a proximal term puts ``proximal-mu`` into the train config, as
Flower's FedProx does; the term pulls towards the received model unless the method's
client half names another anchor.
"""

from __future__ import annotations

import time

_IMPORT_STARTED = time.time()  # the imports below are measured (startup_metrics)

import psutil
import torch
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client_app.job import ClientData, ClientJob
from pollen.adapters import travelling_state
from pollen.config import RunConfig
from pollen.device import peak_memory_mb, reset_peak_memory
from pollen.records import ARRAYS_KEY, to_array_record
from pollen.seeding import derive_seed
from pollen.training import (balanced_class_weights, calibration_shift, evaluator_for,
                             label_counts)
from pollen.training import make_loader
from pollen.training import train as train_model
from strategies import method_of

_IMPORTED = time.time()
_first_message = True

app = ClientApp()


def startup_metrics() -> dict[str, float]:
    """Where a fresh ClientApp process spends its time before the message's own work:
    ``startup_seconds`` from the process's start to this module's import (the
    interpreter, Flower's ClientApp runtime, the FAB) and ``import_seconds`` of this
    module's imports (torch, datasets, flwr). In deployment every message starts a fresh
    process (Flower 1.39's SuperExec), so they are paid per message; a process that has
    served a message before (a simulation worker) reports 0 for both."""
    global _first_message
    first, _first_message = _first_message, False
    if not first:
        return {"startup_seconds": 0.0, "import_seconds": 0.0}
    return {"startup_seconds": _IMPORT_STARTED - psutil.Process().create_time(),
            "import_seconds": _IMPORTED - _IMPORT_STARTED}


@app.query()
def describe(msg: Message, context: Context) -> Message:
    """Identity and data sizes; loading the data here surfaces bad input before round 1."""
    startup_metrics()  # a later message of this process is not its first
    job = ClientJob.from_message(msg, context)
    data = job.data
    about = ConfigRecord({"client-id": job.client_id, "num-train": len(data.train),
                          "num-test": len(data.test), "family": job.family})
    return Message(content=RecordDict({"client": about}), reply_to=msg)


def _label_prior_terms(config: RunConfig, data: ClientData
                       ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """FedLC's logit shift and the class-balanced weights, from this client's train
    labels, when the run asks for them; a causal LM's instruction tuning has no class
    logits, so ``logit-calibration`` and ``class-balanced-loss`` apply to classifiers
    only."""
    if data.modality == "instruct" or not (config.logit_calibration > 0
                                           or config.class_balanced_loss):
        return None, None
    counts = label_counts(data.train, data.num_classes)
    return (calibration_shift(counts, config.logit_calibration)
            if config.logit_calibration > 0 else None,
            balanced_class_weights(counts) if config.class_balanced_loss else None)


@app.train()
def train(msg: Message, context: Context) -> Message:
    entered = time.perf_counter()
    started = startup_metrics()
    job = ClientJob.from_message(msg, context)
    config, server_round = job.config, int(msg.content["config"]["server-round"])
    method = method_of(config.strategy).client
    anchor = method.proximal_anchor(job, msg)
    model = job.model_from(msg)
    seed = derive_seed(config.seed, "train", server_round, job.client_id)
    records = method.before_training(job, msg, model, seed)
    loader = make_loader(job.data.train, config.batch_size, shuffle=True, seed=seed)
    logit_shift, class_weight = _label_prior_terms(config, job.data)
    reset_peak_memory(job.device)
    setup_seconds = time.perf_counter() - entered  # data, model and received tensors
    result = train_model(model, loader, epochs=config.local_epochs,
                         lr=config.round_lr(server_round),
                         device=job.device,
                         proximal_mu=float(msg.content["config"].get("proximal-mu", 0.0)),
                         anchor=anchor, seed=seed, max_steps=config.max_steps,
                         optimizer=config.local_optimizer,
                         logit_shift=logit_shift, class_weight=class_weight)
    metrics = MetricRecord({"num-examples": result.num_examples, "train_loss": result.loss,
                            "train_seconds": result.seconds,
                            "peak_memory_mb": peak_memory_mb(job.device),
                            "setup_seconds": setup_seconds, **started})
    after_records, after_metrics = method.after_training(job, msg, model, seed)
    records.update(after_records)
    metrics.update(after_metrics)
    return Message(content=RecordDict({ARRAYS_KEY: to_array_record(travelling_state(model),
                                                                   config.wire_dtype),
                                       "metrics": metrics, **records}), reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """The model it was sent, on the client's own local test split: loss and accuracy
    (none for free-form instruct data), and ``eval_<name>`` for further metrics
    (instruct: perplexity, macro_f1)."""
    startup_metrics()
    job = ClientJob.from_message(msg, context)
    model = job.model_from(msg)
    data = job.data
    loader = make_loader(data.test, job.config.batch_size, shuffle=False, seed=0)
    evaluate_model = evaluator_for(data.modality, job.family, data.response_labels,
                                   job.config.max_new_tokens)
    result = evaluate_model(model, loader, job.device)
    metrics = MetricRecord({"num-examples": result.num_examples, "eval_loss": result.loss,
                            **{f"eval_{k}": v for k, v in result.metrics.items()}})
    if result.accuracy is not None:
        metrics["eval_accuracy"] = result.accuracy
    # A method's further scores need the loss only: no generated answers; the scorer is
    # built only when a method asks for one.
    metrics.update(method_of(job.config.strategy).client.after_evaluation(
        job, msg, lambda other: evaluator_for(data.modality, job.family, (),
                                              job.config.max_new_tokens)(other, loader,
                                                                         job.device)))
    return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)
