"""Mosaic: generator losses, prototypes, experts, meta model, distillation, stages."""

import io
import json
import math

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict

from client_app.app import app as client_app
from pollen.adapters import travelling_state
from pollen.config import ConfigError, RunConfig
from pollen.records import from_array_record, to_array_record
from server_app.app import run
from strategies import build_model_for, build_strategy, run_config
from strategies.directory import ClientDirectory
from strategies.mosaic.client import (
    GENERATOR_KEY,
    GENERATOR_TOO_FEW_KEY,
    PROTOTYPES_KEY,
    STAGE_KEY,
    adversarial_loss,
    class_prototypes,
    discriminator_loss,
    diversity_loss,
    entropy_loss,
)
from strategies.mosaic.generator import build_generator, input_signature
from strategies.mosaic.teacher import Teacher, class_experts, distill
from strategies.spec import ServerSetup
from tests.localgrid import LocalGrid

FAST = {"strategy": "mosaic", "mosaic.generator-steps": 30, "mosaic.meta-steps": 30,
        "mosaic.distill-steps": 20, "mosaic.samples-per-generator": 8, "local-epochs": 1}


def mosaic(**overrides) -> RunConfig:
    return run_config({**FAST, **overrides})


def test_generator_loss_terms_on_tiny_tensors():
    uniform, confident = torch.zeros(4, 3), torch.eye(3)[[0, 1, 2, 0]] * 50.0
    assert entropy_loss(uniform).item() == pytest.approx(math.log(3))
    assert entropy_loss(confident).item() == pytest.approx(0.0, abs=1e-6)
    # Diversity: -H(batch-mean prediction); one class for all is 0, an even spread -log C.
    assert diversity_loss(torch.eye(3)[[0, 0, 0]] * 50.0).item() == pytest.approx(0.0, abs=1e-6)
    assert diversity_loss(torch.eye(3) * 50.0).item() == pytest.approx(-math.log(3), abs=1e-6)
    assert adversarial_loss(torch.zeros(5)).item() == pytest.approx(math.log(2))
    assert adversarial_loss(torch.full((5,), 30.0)).item() == pytest.approx(0.0, abs=1e-6)
    assert discriminator_loss(torch.zeros(2), torch.zeros(2)).item() == pytest.approx(
        2 * math.log(2))
    assert discriminator_loss(torch.full((2,), 30.0), torch.full((2,), -30.0)).item() == (
        pytest.approx(0.0, abs=1e-6))


def test_prototypes_are_per_class_centres_or_the_class_mean():
    rng = np.random.default_rng(0)
    blobs = np.concatenate([rng.normal(c, 0.01, (10, 2)) for c in (0.0, 5.0, 10.0)])
    features = np.concatenate([blobs, [[1.0, 1.0], [3.0, 3.0]]]).astype(np.float32)
    labels = np.array([0] * 30 + [1, 1])
    centres, classes = class_prototypes(features, labels, k=3, seed=0)
    assert list(classes) == [0, 0, 0, 1]  # class 1 has 2 < k examples: its mean
    assert sorted(map(tuple, np.round(centres[:3], 1))) == [(0, 0), (5, 5), (10, 10)]
    np.testing.assert_allclose(centres[3], [2.0, 2.0])
    again, _ = class_prototypes(features, labels, k=3, seed=0)
    np.testing.assert_array_equal(centres, again)


def test_class_experts_are_weighted_by_class_counts_exactly():
    models = [{"w": np.full(2, 1.0, np.float32)}, {"w": np.full(2, 4.0, np.float32)}]
    counts = [np.array([3.0, 0.0, 1.0]), np.array([1.0, 0.0, 3.0])]
    experts = class_experts(models, counts)
    assert sorted(experts) == [0, 2]  # no client holds class 1: no expert
    np.testing.assert_allclose(experts[0]["w"], (3 * 1 + 1 * 4) / 4)
    np.testing.assert_allclose(experts[2]["w"], (1 * 1 + 3 * 4) / 4)


def cnn_teacher(config: RunConfig, num_experts_from: int = 3) -> tuple[Teacher, torch.nn.Module]:
    model = build_model_for(config, "cnn", 10)
    start = travelling_state(model)
    rng = np.random.default_rng(1)
    uploads = [{n: v + rng.normal(0, 0.05, v.shape).astype(np.float32) for n, v in start.items()}
               for _ in range(num_experts_from)]
    counts = [rng.integers(1, 10, 10).astype(np.float32) for _ in uploads]
    experts = {"cnn": class_experts(uploads, counts)}
    return Teacher({"cnn": model}, {"cnn": ("image", 64)}, experts, 10,
                   torch.device("cpu")), model


@pytest.mark.slow
def test_the_meta_model_learns_a_separable_prototype_set():
    teacher, _ = cnn_teacher(mosaic())
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 3, (10, 64)).astype(np.float32)
    labels = np.repeat(np.arange(10), 5)
    features = (centres[labels] + rng.normal(0, 0.1, (50, 64))).astype(np.float32)
    accuracy = teacher.train_meta([("cnn", features, labels)], steps=300, seed=0)
    assert accuracy >= 0.95


def test_distillation_lowers_the_kl_to_the_teacher():
    config = mosaic()
    teacher, model = cnn_teacher(config)
    rng = np.random.default_rng(0)
    teacher.train_meta([("cnn", rng.normal(size=(40, 64)).astype(np.float32),
                         np.arange(40) % 10)], steps=20, seed=0)
    generators = {c: build_generator(config.seed, 16, ("image", 64), c) for c in ("a", "b")}
    start = travelling_state(model)
    result = distill(teacher, model, start, ("image", 64), generators, steps=60, lr=1e-3,
                     samples_per_generator=16, temperature=1.0, seed=0)
    assert result.kl_after < 0.5 * result.kl_before
    assert result.loss_last < result.loss_first
    assert set(result.tensors) == set(start)
    assert any(not np.array_equal(result.tensors[n], start[n]) for n in start)


@pytest.mark.slow
@pytest.mark.parametrize("prototype_rounds", ["latest", "all"])
def test_a_run_goes_through_every_stage_on_digits(tmp_path, prototype_rounds):
    config = mosaic(**{"num-server-rounds": 3, "mosaic.warmup-rounds": 1,
                       "mosaic.prototype-rounds": prototype_rounds,
                       "mosaic.do-no-harm": False,  # distils whatever the teacher's worth
                       "output-dir": str(tmp_path), "run-name": "m"})
    outputs = run(LocalGrid.simulation(client_app, num_nodes=3), config)
    rows = outputs.read_metrics()
    assert [r["mosaic_stage"] for r in rows] == ["warmup", "generator", "fedavg"]
    generator_round = rows[1]
    assert generator_round["mosaic_generators"] == ["0", "1", "2"]
    assert generator_round["mosaic_generators_skipped_count"] == 0
    assert 0.0 <= generator_round["mosaic_meta_prototype_accuracy"] <= 1.0
    assert generator_round["mosaic_distill_kl_after"] < generator_round["mosaic_distill_kl_before"]
    assert generator_round["mosaic_accuracy_after_distillation"] == pytest.approx(
        generator_round["eval_accuracy"])  # what the clients continue from
    assert 0.0 <= generator_round["mosaic_teacher_accuracy"] <= 1.0
    assert set(generator_round["mosaic_seconds"]) == {"experts", "meta", "distill"}
    # Prototypes: every client's in the generator round (and the warm-up's with "all"),
    # then no more.
    assert (rows[0]["mosaic_prototypes"] > 0) == (prototype_rounds == "all")
    assert rows[1]["mosaic_prototypes"] > rows[0]["mosaic_prototypes"]
    assert rows[2]["mosaic_prototypes"] == rows[1]["mosaic_prototypes"]
    png = (outputs.run_dir / "mosaic-generated.png").read_bytes()
    assert png.startswith(b"\x89PNG")


@pytest.mark.slow  # 10 clients, 2 rounds
def test_tiny_clients_train_no_generator_and_the_run_goes_on(tmp_path):
    """Dirichlet 0.01 over 10 digits clients leaves some with a handful of examples (the
    held-out check's abort); they skip the generator, with the reason in the row."""
    config = mosaic(**{"num-server-rounds": 2, "mosaic.warmup-rounds": 1,
                       "dirichlet-alpha": 0.01, "mosaic.min-generator-examples": 20,
                       "output-dir": str(tmp_path), "run-name": "tiny"})
    outputs = run(LocalGrid.simulation(client_app, num_nodes=10), config)
    generator_round = outputs.read_metrics()[1]
    from pollen.data import client_split, load_task
    task = load_task(config)
    sizes = {str(i): len(client_split(task, config, i, 10)[0]) for i in range(10)}
    tiny = sorted(c for c, n in sizes.items() if n < 20)
    assert tiny, sizes
    assert sorted(s["client"] for s in generator_round["mosaic_generators_skipped"]) == tiny
    for skipped in generator_round["mosaic_generators_skipped"]:
        assert skipped["reason"] == (f"it holds {sizes[skipped['client']]} train examples, "
                                     "fewer than mosaic.min-generator-examples = 20")
    assert generator_round["mosaic_generators"] == sorted(set(sizes) - set(tiny))


def describe_clients(msg: Message, context) -> Message:
    partition = int(context.node_config["partition-id"])
    about = ConfigRecord({"client-id": str(partition), "num-train": 20, "num-test": 4,
                          "family": "cnn"})
    return Message(RecordDict({"client": about}), reply_to=msg)


def cnn_strategy(config: RunConfig, grid: LocalGrid):
    directory = ClientDirectory(config.to_mapping(), timeout=10)
    directory.refresh(grid, strict=True)
    model = build_model_for(config, "cnn", 10)
    return build_strategy(ServerSetup(config, directory, {"cnn": model},
                                      {"cnn": travelling_state(model)}, 10, "image"))


def answer(message: Message, offset: float, generator: dict | None = None,
           prototypes: dict | None = None, head: dict | None = None) -> Message:
    """A client's reply: the model it was sent moved by ``offset`` (or with ``head`` in
    place of its head's tensors), 12 prototypes of classes 0-2 (class c near 5 e_c, so
    the classes are separable), class counts, and in the generator round the given
    generator weights."""
    message.metadata.__dict__["_message_id"] = f"m{message.metadata.dst_node_id}"
    sent = from_array_record(message.content["arrays"])
    rng = np.random.default_rng(message.metadata.dst_node_id)
    labels = np.arange(12) % 3
    features = (5.0 * np.eye(64)[labels] + rng.normal(0, 0.3, (12, 64))).astype(np.float32)
    content = RecordDict({
        "arrays": to_array_record({n: (head or {}).get(n, v + offset) for n, v in sent.items()}),
        "metrics": MetricRecord({"num-examples": 20, "train_loss": 1.0}),
        PROTOTYPES_KEY: to_array_record(prototypes or {
            "features": features, "labels": labels.astype(np.float32),
            "class-counts": np.array([8, 6, 6] + [0] * 7, np.float32)})})
    if generator is not None:
        content[GENERATOR_KEY] = to_array_record(generator)
    return Message(content, reply_to=message)


def generator_weights(config: RunConfig, client: str) -> dict:
    generator = build_generator(config.seed, 16, ("image", 64), client)
    return {n: t.detach().numpy().copy() for n, t in generator.state_dict().items()
            if t.is_floating_point()}


def stale_prototypes() -> dict:
    """Prototypes that an earlier global model's features might give: class c's centre
    near 5 e_{(c+1) mod 3}, which the current head reads as the next class."""
    labels = np.arange(12) % 3
    features = (5.0 * np.eye(64)[(labels + 1) % 3]).astype(np.float32)
    return {"features": features, "labels": labels.astype(np.float32),
            "class-counts": np.array([8, 6, 6] + [0] * 7, np.float32)}


def two_rounds(strategy, grid, config, poison: str | None = None, head: dict | None = None,
               warmup_prototypes: dict | None = None):
    """A warm-up round, then the generator round (client ``poison`` sends NaN weights;
    ``head``: every reply's head tensors in the generator round; ``warmup_prototypes``:
    every reply's prototypes in the warm-up round)."""
    for server_round in (1, 2):
        messages = list(strategy.configure_train(server_round, strategy.global_arrays,
                                                 ConfigRecord(), grid))
        stage = messages[0].content["config"][STAGE_KEY]
        assert stage == ("warmup" if server_round == 1 else "generator")
        replies = []
        for i, message in enumerate(messages):
            client = strategy.directory.client_of(message.metadata.dst_node_id).client_id
            weights = generator_weights(config, client) if server_round == 2 else None
            if weights is not None and client == poison:
                weights = {n: np.full_like(v, np.nan) for n, v in weights.items()}
            replies.append(answer(message, 0.01 * (i + 1), weights,
                                  head=head if server_round == 2 else None,
                                  prototypes=warmup_prototypes if server_round == 1 else None))
        strategy.aggregate_train(server_round, replies)


def test_a_non_finite_generator_is_skipped_and_counted_and_the_run_goes_on():
    config = mosaic(**{"mosaic.warmup-rounds": 1, "num-server-rounds": 3})
    grid = LocalGrid.simulation(describe_clients, num_nodes=3)
    strategy = cnn_strategy(config, grid)
    two_rounds(strategy, grid, config, poison="1")
    fields = strategy.round_metrics()
    assert fields["mosaic_generators"] == ["0", "2"]
    assert fields["mosaic_generators_skipped_count"] == 1
    assert fields["mosaic_generators_skipped"][0]["client"] == "1"
    assert "not finite" in fields["mosaic_generators_skipped"][0]["reason"]
    assert "mosaic_distill_kl_after" in fields  # distilled from the other two


def perfect_head(strategy) -> dict:
    """CNN head tensors that classify every ``answer`` prototype right (class c <- e_c)."""
    from strategies.mosaic.heads import HeadParams

    names = HeadParams(strategy.models["cnn"]).names
    weight = next(t for t, m in names.items() if m == "weight")
    bias = next(t for t, m in names.items() if m == "bias")
    return {weight: 10.0 * np.eye(10, 64, dtype=np.float32), bias: np.zeros(10, np.float32)}


def test_do_no_harm_distils_only_when_the_teacher_beats_the_student_on_held_out_prototypes():
    config = mosaic(**{"mosaic.warmup-rounds": 1, "num-server-rounds": 3})
    grid = LocalGrid.simulation(describe_clients, num_nodes=3)
    # The student's head (the round's FedAvg) is random: the teacher, trained on the
    # separable prototypes, beats it on the held-out ones, so it distils.
    learner = cnn_strategy(config, grid)
    two_rounds(learner, grid, config)
    fields = learner.round_metrics()
    assert fields["mosaic_teacher_heldout_accuracy"] > fields["mosaic_student_heldout_accuracy"]
    # held out of the generator round's prototypes only (3 clients x 12)
    assert fields["mosaic_heldout_prototypes"] == round(0.2 * 3 * 12)
    assert "mosaic_distill_kl_after" in fields and learner.distilled
    assert fields["mosaic_gate"] == "teacher"
    # A student whose head is already perfect on them: nothing to gain, FedAvg is kept,
    # even though the warm-up round's prototypes (an earlier model's features) would fool
    # it: they train the meta model but are never held out for the gate.
    expert = cnn_strategy(config, grid)
    head = perfect_head(expert)
    two_rounds(expert, grid, config, head=head, warmup_prototypes=stale_prototypes())
    fields = expert.round_metrics()
    assert fields["mosaic_student_heldout_accuracy"] == 1.0
    assert "does not beat the student" in fields["mosaic_distillation_skipped"]
    assert "mosaic_distill_kl_after" not in fields and not expert.distilled
    assert fields["mosaic_gate"] == "student"
    # What the generators made is shown either way (#35): the PNG and each generator's
    # samples, identical for both strategies (same seed, same generators).
    for strategy in (learner, expert):
        files = strategy.round_files(2)
        assert files["mosaic-generated.png"].startswith(b"\x89PNG")
        assert sorted(files) == ["mosaic-generated.png", "samples/0.npy", "samples/1.npy",
                                 "samples/2.npy"]
        assert np.load(io.BytesIO(files["samples/0.npy"])).shape[0] == 10
        assert strategy.round_files(3) == {}
    assert learner.round_files(2) == expert.round_files(2)
    for name, value in head.items():  # the mean of equal heads, undistilled
        np.testing.assert_array_equal(expert.family_tensors["cnn"][name], value)


def test_a_client_below_min_generator_examples_sends_no_generator_and_says_why():
    config = mosaic(**{"mosaic.warmup-rounds": 1, "num-server-rounds": 3,
                       "mosaic.do-no-harm": False})
    grid = LocalGrid.simulation(describe_clients, num_nodes=3)
    strategy = cnn_strategy(config, grid)
    for server_round in (1, 2):
        messages = list(strategy.configure_train(server_round, strategy.global_arrays,
                                                 ConfigRecord(), grid))
        replies = []
        for message in messages:
            client = strategy.directory.client_of(message.metadata.dst_node_id).client_id
            reply = answer(message, 0.01, generator_weights(config, client)
                           if server_round == 2 and client != "2" else None)
            if server_round == 2 and client == "2":
                reply.content["metrics"][GENERATOR_TOO_FEW_KEY] = 3.0
            replies.append(reply)
        strategy.aggregate_train(server_round, replies)
    fields = strategy.round_metrics()
    assert fields["mosaic_generators"] == ["0", "1"]
    assert fields["mosaic_generators_skipped"] == [{
        "client": "2", "reason": "it holds 3 train examples, fewer than "
                                 "mosaic.min-generator-examples = 10"}]
    assert "mosaic_distill_kl_after" in fields  # its model still averaged in, the run went on


def test_malformed_prototypes_reject_the_reply():
    config = mosaic(**{"mosaic.warmup-rounds": 1, "num-server-rounds": 3,
                       "mosaic.prototype-rounds": "all"})  # checked in warm-up rounds too
    grid = LocalGrid.simulation(describe_clients, num_nodes=2)
    strategy = cnn_strategy(config, grid)
    messages = list(strategy.configure_train(1, strategy.global_arrays, ConfigRecord(), grid))
    bad = {"features": np.zeros((3, 7), np.float32), "labels": np.zeros(3, np.float32),
           "class-counts": np.ones(10, np.float32)}
    strategy.aggregate_train(1, [answer(messages[0], 0.1), answer(messages[1], 0.1,
                                                                   prototypes=bad)])
    assert len(strategy.rejected) == 1
    assert "(P, 64)" in next(iter(strategy.rejected.values()))


def test_state_round_trip_gives_the_same_teacher_and_next_round():
    config = mosaic(**{"mosaic.warmup-rounds": 1, "num-server-rounds": 3})
    grid = LocalGrid.simulation(describe_clients, num_nodes=3)
    strategy = cnn_strategy(config, grid)
    two_rounds(strategy, grid, config)
    state = strategy.state_dict()
    assert state["meta"]["mosaic_stage"] == "generator" and state["meta"]["mosaic_distilled"]
    assert len(state["meta"]["mosaic_generators"]) == 3
    restored = cnn_strategy(config, grid)
    json.dumps(state["meta"])  # checkpoints write the meta part as JSON
    restored.load_state_dict(state)
    again = restored.state_dict()
    assert again["meta"] == state["meta"]
    assert set(again["tensors"]) == set(state["tensors"])
    for name, value in state["tensors"].items():
        np.testing.assert_array_equal(again["tensors"][name], value)
    probe = torch.rand(5, 64)
    torch.testing.assert_close(restored.teacher(probe, ("image", 64)),
                               strategy.teacher(probe, ("image", 64)))
    for s in (strategy, restored):
        messages = list(s.configure_train(3, s.global_arrays, ConfigRecord(), grid))
        s.aggregate_train(3, [answer(m, 0.5) for m in messages])
    for name, value in from_array_record(strategy.global_arrays).items():
        np.testing.assert_array_equal(from_array_record(restored.global_arrays)[name], value)


@pytest.mark.parametrize("overrides,message", [
    ({"mosaic.warmup-rounds": 3, "num-server-rounds": 3}, "num-server-rounds must be > 3"),
    ({"mosaic.student-family": "minilm"}, "mosaic.student-family 'minilm'"),
    ({"mosaic.prototypes": 0}, "mosaic.prototypes must be >= 1"),
    ({"mosaic.temperature": 0.0}, "mosaic.temperature must be > 0"),
])
def test_bad_mosaic_settings_are_refused(overrides, message):
    with pytest.raises(ConfigError, match=message):
        mosaic(**overrides)


@pytest.mark.slow  # trains for more than 10 s
def test_across_two_widths_the_student_family_is_distilled_on_its_own_inputs(tmp_path,
                                                                              topics_csv):
    config = mosaic(**{"model-families": "tiny-bert,tiny-bert-w64", "model": "tiny-bert",
                       "mosaic.student-family": "tiny-bert-w64", "dataset": str(topics_csv),
                       "mosaic.do-no-harm": False,
                       "text-column": "text", "mosaic.warmup-rounds": 0,
                       "num-server-rounds": 2, "max-seq-len": 16,
                       "mosaic.sequence-length": 8, "output-dir": str(tmp_path),
                       "run-name": "families"})
    outputs = run(LocalGrid.simulation(client_app, num_nodes=4), config)
    rows = outputs.read_metrics()
    assert [r["mosaic_stage"] for r in rows] == ["generator", "fedavg"]
    first = rows[0]
    assert first["mosaic_experts"] == {"tiny-bert": [0, 1, 2, 3],
                                       "tiny-bert-w64": [0, 1, 2, 3]}
    assert first["mosaic_generators"] == ["0", "1", "2", "3"]
    assert first["mosaic_distill_kl_after"] < first["mosaic_distill_kl_before"]
    assert first["family_accuracy"]["tiny-bert-w64"] == pytest.approx(
        first["mosaic_accuracy_after_distillation"])
    assert not (outputs.run_dir / "mosaic-generated.png").exists()  # text: no image grid
    samples = sorted(p.name for p in (outputs.run_dir / "samples").iterdir())
    assert samples == ["0.npy", "1.npy", "2.npy", "3.npy"]  # input embeddings
    assert first["mosaic_gate"] == "off"


def test_generators_take_each_family_s_inputs():
    config = mosaic(**{"model-families": "tiny-bert,tiny-bert-w64", "model": "tiny-bert"})
    for family, width in (("tiny-bert", 32), ("tiny-bert-w64", 64)):
        model = build_model_for(config, family, 4)
        signature = input_signature(model, family)
        assert signature == ("text", width)
        samples = build_generator(config.seed, config.method.sequence_length, signature,
                                  "0")(torch.randn(2, 100))
        assert samples.shape == (2, config.method.sequence_length, width)
        logits = model(inputs_embeds=samples, attention_mask=torch.ones(2, 16)).logits
        assert logits.shape == (2, 4)
