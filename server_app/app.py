"""The ServerApp: check everything, describe the clients, run the rounds, save.

Everything that can be wrong with the input (config, dataset, model, client data) is
checked before round 1: the server loads the data and builds the model itself, and the
clients' describe replies surface their own problems.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from logging import INFO, WARNING
from pathlib import Path
from typing import Any

from flwr.app import Context
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp

from pollen.adapters import load_travelling_state, save_final_model, travelling_state
from pollen.catalog import check_compatible
from pollen.config import RunConfig
from pollen.data import check_enough_examples, load_task
from pollen.device import node_device
from pollen.errors import ConfigError
from pollen.progress import Progress
from pollen.records import LABEL_NAMES_KEY, from_array_record
from pollen.registry.publisher import RegistryPublisher
from pollen.seeding import seed_everything
from pollen.server_data import load_server_data
from pollen.training import EvalResult, evaluator_for, make_loader, torch_dataset
from server_app.checkpoints import latest_checkpoint, restore_rng, save_checkpoint
from server_app.outputs import RunOutputs
from server_app.rounds import one_class, one_class_warning, run_round
from strategies import build_strategy, default_run_config, method_of, run_config
from strategies.base import PollenStrategy
from strategies.directory import ClientDirectory
from strategies.spec import ServerSetup


class ServerEvaluator:
    """Global models on the server's held-out test split: the run's model, or with a
    strategy for several backbones (``pollen.families``) each family's model."""

    def __init__(self, config: RunConfig) -> None:
        task = load_task(config)
        self.device = node_device(config)
        self.method = method_of(config.strategy)
        self.models, self.loaders, self.evaluators = {}, {}, {}
        for family in config.families:
            check_compatible(family, task.modality, config.task)
            self.models[family] = self.method.build_model(config, family,
                                                          task.num_classes).to(self.device)
            test = torch_dataset(task.server_test, task.modality, family, config.max_seq_len)
            self.loaders[family] = make_loader(test, config.batch_size, shuffle=False, seed=0)
            self.evaluators[family] = evaluator_for(task.modality, family, task.response_labels,
                                                    config.max_new_tokens)

    def evaluate_family(self, family: str, tensors: dict) -> EvalResult:
        """A family's model with ``tensors`` on the server's test split."""
        load_travelling_state(self.models[family], tensors, what=f"global model {family}")
        return self.evaluators[family](self.models[family], self.loaders[family], self.device)

    def __call__(self, strategy) -> dict[str, EvalResult]:
        if self.method.families:
            models = strategy.global_models()
        else:
            models = {next(iter(self.models)): from_array_record(strategy.global_arrays)}
        return {family: self.evaluate_family(family, tensors)
                for family, tensors in models.items()}


@dataclass
class Prepared:
    """A run ready for round 1: its config, the checked clients, the strategy (a Flower
    strategy that Flower's own ``start()`` can run as well), and the server's models."""

    config: RunConfig
    strategy: PollenStrategy
    evaluator: ServerEvaluator
    num_classes: int


def prepare(grid: Grid, config: RunConfig) -> Prepared:
    """Everything before round 1: data, models, clients described and checked, strategy."""
    seed_everything(config.seed)
    evaluator = ServerEvaluator(config)
    task = load_task(config)
    server_data = load_server_data(config, task) if config.has_server_data else None
    if server_data is not None:
        log(INFO, "server data: %d examples (%s), %s", len(server_data), server_data.source,
            "labeled" if server_data.labeled else "unlabeled")
    run_record = {**config.client_mapping(), LABEL_NAMES_KEY: list(task.label_names)}
    directory = ClientDirectory(run_record, timeout=config.round_timeout)
    directory.wait_for(grid, config.min_clients)
    # In simulation every node holds one partition of the pool.
    check_enough_examples(task, len(list(grid.get_node_ids())))
    directory.refresh(grid, min_nodes=config.min_clients, strict=True)
    clients = directory.clients()
    log(INFO, "%d clients: %s", len(clients),
        ", ".join(f"{c.client_id} ({c.num_train} train / {c.num_test} test)" for c in clients))

    strategy = build_strategy(ServerSetup(
        config, directory, evaluator.models,
        {family: travelling_state(m) for family, m in evaluator.models.items()},
        task.num_classes, task.modality, server_data, evaluator.loaders))
    strategy.check_clients(clients)
    strategy.summary()
    return Prepared(config, strategy, evaluator, task.num_classes)


# Keys a resumed run may change: they do not change what the rounds compute.
RESUMABLE_CHANGES = ("num-server-rounds", "round-timeout", "min-clients", "checkpoint-every",
                     "keep-checkpoints", "registry-address", "registry-root-certificates",
                     "device", "output-dir", "run-name")


def resumed_config(requested: RunConfig, run_dir: Path) -> RunConfig:
    """The config a run was started with, and what the resume asks to change.

    Flower hands the app every key, at its default unless set, so a key counts as asked
    for when its value differs from the declared default (and was not left at "auto").
    ``num-server-rounds`` extends (or ends) the run; the keys of ``RESUMABLE_CHANGES``
    change how it runs; any other key that differs from the run's own is refused, each
    named with both values, since the resumed rounds would not be those of one run."""
    stored = run_config(json.loads((run_dir / "config.json").read_text()))
    declared, before = default_run_config(), stored.to_mapping()
    auto = dict(requested.recommended_by)
    asked = {key: value for key, value in requested.to_mapping().items()
             if key != "resume" and key not in auto and value != declared.get(key)
             and value != before.get(key)}
    refused = sorted(set(asked) - set(RESUMABLE_CHANGES))
    if refused:
        raise ConfigError("resume: the run was started with other values of "
                          + "; ".join(f"{key} (run: {before.get(key)!r}, asked: {asked[key]!r})"
                                      for key in refused)
                          + f"; only {', '.join(RESUMABLE_CHANGES)} may change on resume")
    if stored.lr_schedule == "cosine" and "num-server-rounds" in asked:
        raise ConfigError(f"resume: the run's lr-schedule 'cosine' spans its "
                          f"{stored.num_server_rounds} rounds; with num-server-rounds = "
                          f"{asked['num-server-rounds']} its past rounds would have had "
                          "other learning rates, so it cannot be extended")
    return run_config({**before, **asked})


def run(grid: Grid, config: RunConfig) -> RunOutputs:
    """A new run, or with ``resume`` set, the continuation of the run in that folder from
    its last complete checkpoint, under the config it was started with (and a new
    ``num-server-rounds`` to extend it: ``resumed_config``)."""
    config.check_server_files()
    checkpoint = None
    if config.resume:
        run_dir = Path(config.resume).expanduser().resolve()
        config = resumed_config(config, run_dir)
        config.check_server_files()
        checkpoint = latest_checkpoint(run_dir)
        if checkpoint is None:
            raise ConfigError(f"resume: {run_dir} holds no complete checkpoint")
        if checkpoint.server_round > config.num_server_rounds:
            raise ConfigError(f"resume: {run_dir} has {checkpoint.server_round} rounds "
                              f"already, more than num-server-rounds = "
                              f"{config.num_server_rounds}")
        if checkpoint.server_round == config.num_server_rounds:
            log(WARNING, "resume: %s is complete (%d of %d rounds); set num-server-rounds "
                "higher to extend it", run_dir, checkpoint.server_round,
                config.num_server_rounds)
    prepared = prepare(grid, config)
    strategy, evaluator = prepared.strategy, prepared.evaluator
    if checkpoint is None:
        outputs, first_round = RunOutputs.create(config), 1
    else:
        strategy.load_state_dict(checkpoint.strategy_state)
        restore_rng(checkpoint)
        outputs = RunOutputs.reopen(run_dir, checkpoint.output_lines)
        (run_dir / "config.json").write_text(config.to_json() + "\n")  # extended rounds
        first_round = checkpoint.server_round + 1
        log(INFO, "resuming from %s", checkpoint.path)
    log(INFO, "writing outputs to %s", outputs.run_dir)
    publisher = (RegistryPublisher(config, evaluator.models, prepared.num_classes,
                                   outputs.run_dir.name) if config.registry_address else None)

    started = time.perf_counter()
    progress = Progress(config.num_server_rounds - first_round + 1, "rounds")
    for server_round in range(first_round, config.num_server_rounds + 1):
        row = run_round(grid, strategy, config, server_round, lambda: evaluator(strategy),
                        evaluator.device)
        if publisher is not None:
            row["registry_published"] = publisher.publish_round(strategy, server_round)
        outputs.append_metrics(row)
        for name, record in strategy.round_records(server_round).items():
            outputs.append_jsonl(name, record)
        for name, content in strategy.round_files(server_round).items():
            (outputs.run_dir / name).parent.mkdir(parents=True, exist_ok=True)
            (outputs.run_dir / name).write_bytes(content)
        if (server_round % config.checkpoint_every == 0
                or server_round == config.num_server_rounds):
            save_checkpoint(outputs.run_dir, server_round, strategy, config.keep_checkpoints)
        if config.task == "instruct":  # an LLM run keeps each round's adapters
            _save_round_models(strategy, evaluator, outputs.run_dir, server_round)
        log(INFO, "%s", progress.step(f"round {server_round} of {config.num_server_rounds}"))

    if publisher is not None:
        publisher.close()
    saved_models = strategy.final_models()
    _save_models(saved_models, strategy, evaluator, outputs.run_dir)
    rows = outputs.read_metrics()
    one_class_rows = [row for row in rows if one_class(row)]
    parameters = {family: {"travelling": int(sum(a.size for a in travelling_state(m).values())),
                           "model": int(sum(p.numel() for p in m.parameters()))}
                  for family, m in evaluator.models.items()}
    outputs.write_summary({
        "rounds": len(rows),
        "final_eval_accuracy": rows[-1]["eval_accuracy"],
        "best_eval_accuracy": max((r["eval_accuracy"] for r in rows
                                   if r["eval_accuracy"] is not None), default=None),
        "final_eval_loss": rows[-1]["eval_loss"],
        "final_client_accuracy": rows[-1]["client_accuracy"],
        "total_seconds": time.perf_counter() - started,
        "total_bytes_up": sum(r["bytes_up"] for r in rows),
        "total_bytes_down": sum(r["bytes_down"] for r in rows),
        # The run's model, or the first family's; every family's with several backbones.
        "travelling_parameters": parameters[next(iter(parameters))]["travelling"],
        "model_parameters": parameters[next(iter(parameters))]["model"],
        **({"family_parameters": parameters} if len(parameters) > 1 else {}),
        "saved_models": sorted(saved_models),
        "one_class_rounds": [row["round"] for row in one_class_rows],
    })
    outputs.plot()
    if one_class_rows:
        log(WARNING, "run finished with a warning: %s", one_class_warning(one_class_rows))
    log(INFO, "run finished: final global accuracy %s, loss %.4f; outputs in %s",
        _shown(rows[-1]["eval_accuracy"]), rows[-1]["eval_loss"], outputs.run_dir)
    return outputs


def _save_models(models: dict[str, dict], strategy: PollenStrategy, evaluator: ServerEvaluator,
                 run_dir: Path, where=lambda folder: folder) -> None:
    """Each model (folder relative to the run folder -> travelling tensors) in its model's
    own format (``save_final_model``), at ``where(folder)`` under ``run_dir``."""
    for folder, tensors in models.items():
        model = evaluator.models[strategy.model_family(folder) or next(iter(evaluator.models))]
        load_travelling_state(model, tensors, what=f"model {folder}")
        save_final_model(model, run_dir / where(folder))


def _save_round_models(strategy: PollenStrategy, evaluator: ServerEvaluator, run_dir: Path,
                       server_round: int) -> None:
    """The round's global adapter at ``adapters/round-N``; with one model per family,
    each family's at ``adapters/round-N/<family>``."""
    models = strategy.final_models()
    kept = {"model": models["model"]} if "model" in models else models
    _save_models(kept, strategy, evaluator, run_dir / "adapters" / f"round-{server_round}",
                 where=lambda folder: "" if folder == "model" else folder.split("/", 1)[1])


def _shown(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def build_server_app(overrides: Mapping[str, Any] | None = None) -> ServerApp:
    """A ServerApp whose run config is Flower's (``context.run_config``) with
    ``overrides`` on top; ``run_simulation`` passes no run config, so tests use this."""
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        config = run_config({**dict(context.run_config), **dict(overrides or {})})
        run(grid, config)

    return server_app


app = build_server_app()
