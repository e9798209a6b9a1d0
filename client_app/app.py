"""The ClientApp: answers the server's describe query, trains, and evaluates."""

from __future__ import annotations

from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client_app.job import ClientJob
from client_app.mosaic import prototype_record, train_generator
from client_app.proximal import proximal_anchor, proximal_mu
from pollen.adapters import travelling_state
from pollen.mosaic import GENERATOR, WARMUP
from pollen.device import peak_memory_mb, reset_peak_memory
from pollen.records import (ARRAYS_KEY, GENERATOR_KEY, GLOBAL_ROUND_KEY, MOSAIC_STAGE_KEY,
                            PROTOTYPES_KEY, to_array_record)
from pollen.seeding import derive_seed
from pollen.training import evaluate as evaluate_model
from pollen.training import make_loader, train as train_model

app = ClientApp()


@app.query()
def describe(msg: Message, context: Context) -> Message:
    """Identity and data sizes; loading the data here surfaces bad input before round 1."""
    job = ClientJob.from_message(msg, context)
    data = job.data
    about = ConfigRecord({"client-id": job.client_id, "num-train": len(data.train),
                          "num-test": len(data.test), "family": job.family})
    return Message(content=RecordDict({"client": about}), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    job = ClientJob.from_message(msg, context)
    config, server_round = job.config, int(msg.content["config"]["server-round"])
    anchor = proximal_anchor(job, msg)
    model = job.model_from(msg)
    seed = derive_seed(config.seed, "train", server_round, job.client_id)
    extra = {}
    stage = msg.content["config"].get(MOSAIC_STAGE_KEY)
    if stage == GENERATOR or (stage == WARMUP and config.mosaic_prototype_rounds == "all"):
        # Mosaic's prototypes of the model as received
        extra[PROTOTYPES_KEY] = prototype_record(job, model, seed, config.wire_dtype)
    loader = make_loader(job.data.train, config.batch_size, shuffle=True, seed=seed)
    reset_peak_memory(job.device)
    result = train_model(model, loader, epochs=config.local_epochs, lr=config.lr,
                         device=job.device, proximal_mu=proximal_mu(msg), anchor=anchor,
                         seed=seed)
    metrics = MetricRecord({"num-examples": result.num_examples, "train_loss": result.loss,
                            "train_seconds": result.seconds,
                            "peak_memory_mb": peak_memory_mb(job.device)})
    if GLOBAL_ROUND_KEY in msg.content["config"]:  # guided merging's round stamp
        metrics[GLOBAL_ROUND_KEY] = int(msg.content["config"][GLOBAL_ROUND_KEY])
    if stage == GENERATOR:
        weights, generator_metrics = train_generator(job, model, seed)
        metrics.update(generator_metrics)
        if weights is not None:
            extra[GENERATOR_KEY] = to_array_record(weights, config.wire_dtype)
    return Message(content=RecordDict({ARRAYS_KEY: to_array_record(travelling_state(model),
                                                                   config.wire_dtype),
                                       "metrics": metrics, **extra}), reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Accuracy of the model it was sent on the client's own local test split."""
    job = ClientJob.from_message(msg, context)
    model = job.model_from(msg)
    loader = make_loader(job.data.test, job.config.batch_size, shuffle=False, seed=0)
    result = evaluate_model(model, loader, job.device)
    metrics = MetricRecord({"num-examples": result.num_examples, "eval_loss": result.loss,
                            "eval_accuracy": result.accuracy})
    return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)
