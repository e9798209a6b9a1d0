"""HeteroTune (DeMA + CMGA) and its baselines across backbones of different widths/depths."""

import json

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict

from client_app.app import app as client_app
from pollen.adapters import travelling_state
from pollen.config import ConfigError, RunConfig
from pollen.data import load_task
from pollen.dema.model import is_shared, load_dema_adapter
from pollen.families import family_of
from pollen.models import build_backbone
from pollen.records import from_array_record, to_array_record
from pollen.training import evaluate, make_loader, torch_dataset
from server_app.app import run
from strategies import build_model_for, build_strategy, run_config
from strategies.directory import ClientDirectory
from strategies.heterotune.strategy import cmga, conflicts_and_cosines
from strategies.spec import ServerSetup
from tests.localgrid import LocalGrid

WIDTHS = "tiny-bert,tiny-bert-w64"  # hidden 32 / 2 layers and hidden 64 / 3 layers


def hetero(**overrides) -> RunConfig:
    return run_config({"strategy": "heterotune", "model-families": WIDTHS,
                                   "model": "tiny-bert", **overrides})


@pytest.mark.parametrize("family", ["tiny-bert", "minilm-l2"])
def test_dema_leaves_the_backbone_unchanged_at_initialisation(family):
    config = hetero(**{"model-families": family, "model": family})
    adapted = build_model_for(config, family, 4).eval()
    plain = build_backbone(family, 4, config.seed).eval()
    ids = torch.randint(0, 1000, (3, 10))
    with torch.no_grad():
        assert torch.equal(adapted(input_ids=ids).logits, plain(input_ids=ids).logits)
    trainable = {n for n, p in adapted.named_parameters() if p.requires_grad}
    assert trainable == set(travelling_state(adapted))
    assert all(is_shared(n) or ".down." in n or ".up." in n or "classifier" in n
               for n in trainable)


def test_dema_starts_as_a_scaled_rank_r_lora():
    """Experts near the identity and the alpha / r scale: once U moves, the adapter adds
    about (alpha / r) U D h, LoRA's (alpha / r) B A h, not a mixture shrunk to ~0.28."""
    from pollen.dema.layer import DemaLinear, ExpertBank

    torch.manual_seed(0)
    base, bank = torch.nn.Linear(64, 64), ExpertBank(8, 4)
    layer = DemaLinear(base, bank, 8, 16 / 8)
    torch.nn.init.normal_(layer.up.weight, std=0.1)
    h = torch.randn(32, 64)
    with torch.no_grad():
        added = layer(h) - base(h)
        lora = 2.0 * layer.up(layer.down(h))
    ratio = added.norm() / lora.norm()
    assert 0.8 < ratio < 1.2
    assert not torch.equal(bank.experts[0], bank.experts[1])  # experts can diverge


def test_banks_align_by_absolute_layer_and_projections_of_other_widths_stay_apart():
    config = hetero()
    grid = LocalGrid.simulation(describe_family, num_nodes=4)
    strategy = strategy_over(config, grid).strategy
    small, wide = (travelling_state(build_model_for(config, f, 4)) for f in WIDTHS.split(","))
    banks = sorted(n for n in small if is_shared(n))
    # one bank per layer index: the 2-layer family holds banks 0-1, the 3-layer one 0-2
    assert {n.split(".")[1] for n in banks} == {"0", "1"}
    assert {n.split(".")[1] for n in wide if is_shared(n)} == {"0", "1", "2"}
    for name in banks:  # the same initial values in every family that holds them
        assert np.array_equal(small[name], wide[name])
    assert strategy.holds["tiny-bert"] == banks
    assert sorted(n for n in strategy.shared if is_shared(n)) == sorted(
        n for n in wide if is_shared(n))
    down = "query.down.weight"  # other widths: D/U of common layers stay family tensors
    assert {v.shape for n, v in small.items() if n.endswith(down)} == {(8, 32)}
    assert {v.shape for n, v in wide.items() if n.endswith(down)} == {(8, 64)}
    assert not any(n.endswith(down) and n in small for n in strategy.shared)


def test_relative_alignment_shares_b_banks_by_depth_and_no_projection():
    config = hetero(**{"heterotune.layer-alignment": "relative"})
    strategy = strategy_over(config, LocalGrid.simulation(describe_family, num_nodes=4)).strategy
    assert len(strategy.shared) == 2 * config.method.dema_banks * 2  # experts + gate, per bank and module
    assert all(is_shared(n) for n in strategy.shared)
    assert strategy.holds["tiny-bert"] == strategy.holds["tiny-bert-w64"] == sorted(strategy.shared)


def test_prefix_families_of_one_width_share_their_layers_projections():
    """MiniLM-L2 and -L4 are prefixes of one checkpoint, 384 wide: layer l's D/U and bank
    are one tensor for both (same initial values); L4's layers 2-3 are its own."""
    families = "minilm-l2,minilm-l4"
    config = hetero(**{"model-families": families, "model": "minilm-l2"})

    def describe(msg, context):
        partition = int(context.node_config["partition-id"])
        about = ConfigRecord({"client-id": str(partition), "num-train": 10, "num-test": 2,
                              "family": families.split(",")[partition % 2]})
        return Message(RecordDict({"client": about}), reply_to=msg)

    strategy = strategy_over(config, LocalGrid.simulation(describe, num_nodes=2)).strategy
    short, deep = strategy.holds["minilm-l2"], strategy.holds["minilm-l4"]
    assert set(short) < set(deep)
    layer_of = {n: n.split("layer.")[1].split(".")[0] for n in deep if "layer." in n}
    assert {layer_of[n] for n in short if n in layer_of} == {"0", "1"}
    assert {layer_of[n] for n in deep if n in layer_of} == {"0", "1", "2", "3"}
    assert any(n.endswith("query.down.weight") for n in short)
    assert all(not n.startswith("backbone.classifier") for n in deep)  # heads stay apart
    models = {f: travelling_state(build_model_for(config, f, 4)) for f in families.split(",")}
    for name in short:
        assert np.array_equal(models["minilm-l2"][name], models["minilm-l4"][name])


def test_cmga_removes_negative_inner_products_per_unit_and_keeps_agreeing_updates():
    rng = np.random.default_rng(0)
    u, w = rng.normal(size=50), rng.normal(size=50)
    v = -u + 0.3 * rng.normal(size=50)  # in conflict with u on tensor "a"
    updates = {"f": {"a": u, "b": w}, "g": {"a": v, "b": w + 0.1 * u}}
    per_tensor = [["a"], ["b"]]
    conflict, cosines = conflicts_and_cosines(updates, per_tensor)
    assert conflict == 0.5  # "a" conflicts, "b" agrees
    expected = np.mean([u @ v / np.linalg.norm(u) / np.linalg.norm(v),
                        w @ (w + 0.1 * u) / np.linalg.norm(w) / np.linalg.norm(w + 0.1 * u)])
    assert cosines == {"f|g": pytest.approx(expected)}
    projected = cmga(updates, per_tensor, order_seed=1)
    assert projected["f"]["a"] @ v == pytest.approx(0.0, abs=1e-9)
    assert projected["g"]["a"] @ u == pytest.approx(0.0, abs=1e-9)
    for f in updates:  # the agreeing tensor is left as it was
        assert np.array_equal(projected[f]["b"], updates[f]["b"])
    # over the whole vector the same pair may not conflict at all: the units matter
    whole = conflicts_and_cosines(updates, [["a", "b"]])[0]
    assert whole == float(u @ v + w @ (w + 0.1 * u) < 0)


def describe_families(families: str):
    """A describe answer: client i runs family i mod 2 of ``families``."""
    def describe(msg: Message, context) -> Message:
        partition = int(context.node_config["partition-id"])
        about = ConfigRecord({"client-id": str(partition), "num-train": 10, "num-test": 2,
                              "family": families.split(",")[partition % 2]})
        return Message(RecordDict({"client": about}), reply_to=msg)
    return describe


describe_family = describe_families(WIDTHS)


def strategy_over(config: RunConfig, grid: LocalGrid):
    directory = ClientDirectory(config.to_mapping(), timeout=10)
    directory.refresh(grid, strict=True)
    models = {f: build_model_for(config, f, 4) for f in config.families}
    return build_strategy(ServerSetup(config, directory, models,
                                      {f: travelling_state(m) for f, m in models.items()},
                                      4, "text"))


def answer(message, offset, num_examples):
    sent = from_array_record(message.content["arrays"])
    message.metadata.__dict__["_message_id"] = f"m{message.metadata.dst_node_id}"
    tensors = {k: v + np.float32(offset) for k, v in sent.items()}
    return Message(RecordDict({"arrays": to_array_record(tensors), "metrics": MetricRecord(
        {"num-examples": num_examples, "train_loss": 1.0, "peak_memory_mb": 1.0})}),
        reply_to=message), sent


@pytest.mark.parametrize("use_cmga", [True, False])
def test_family_tensors_never_mix_and_shared_ones_combine_by_family(use_cmga):
    config = hetero(**{"heterotune.cmga": use_cmga})
    grid = LocalGrid.simulation(describe_family, num_nodes=4)
    strategy = strategy_over(config, grid)
    before = {f: dict(t) for f, t in strategy.global_models().items()}
    messages = list(strategy.configure_train(1, strategy.global_arrays, ConfigRecord(), grid))
    family = {m.metadata.dst_node_id: strategy.directory.client_of(m.metadata.dst_node_id).family
              for m in messages}
    # tiny-bert clients move every tensor by +1 and +3 (10 and 30 examples); the wide
    # family's clients by -2 and -2 (so the shared updates conflict).
    offsets = {"tiny-bert": [(1.0, 10), (3.0, 30)], "tiny-bert-w64": [(-2.0, 20), (-2.0, 20)]}
    replies = []
    for message in messages:
        offset, count = offsets[family[message.metadata.dst_node_id]].pop(0)
        replies.append(answer(message, offset, count)[0])
        assert set(from_array_record(message.content["arrays"])) == set(before[family[
            message.metadata.dst_node_id]])  # a client receives its own family's model only
    strategy.aggregate_train(1, replies)
    after = strategy.global_models()
    for name, value in before["tiny-bert"].items():
        if not is_shared(name):
            np.testing.assert_allclose(after["tiny-bert"][name], value + 2.5, atol=1e-5)
    for name, value in before["tiny-bert-w64"].items():
        if not is_shared(name):
            np.testing.assert_allclose(after["tiny-bert-w64"][name], value - 2.0, atol=1e-5)
    shared = [n for n in before["tiny-bert"] if is_shared(n)]  # banks of layers 0-1
    steps = {n: after["tiny-bert"][n] - before["tiny-bert"][n] for n in shared}
    assert all(np.array_equal(after["tiny-bert"][n], after["tiny-bert-w64"][n]) for n in shared)
    assert strategy.round_metrics()["cmga_conflict_fraction"] == 1.0
    assert strategy.round_metrics()["cmga_cosines"] == {
        "tiny-bert|tiny-bert-w64": pytest.approx(-1.0)}
    if use_cmga:  # u = (+2.5, -2.0) everywhere: both are projected to zero
        assert all(np.allclose(step, 0.0, atol=1e-5) for step in steps.values())
    else:  # sample-weighted: (40 * 2.5 - 40 * 2.0) / 80 = 0.25
        assert all(np.allclose(step, 0.25, atol=1e-5) for step in steps.values())
    # the bank of layer 2, which only the 3-layer family holds, takes its update alone
    only_wide = [n for n in before["tiny-bert-w64"] if is_shared(n) and n not in before["tiny-bert"]]
    assert only_wide
    for name in only_wide:
        np.testing.assert_allclose(after["tiny-bert-w64"][name],
                                   before["tiny-bert-w64"][name] - 2.0, atol=1e-5)


def test_state_round_trip_gives_the_same_next_round():
    config = hetero()
    grid = LocalGrid.simulation(describe_family, num_nodes=4)
    strategy = strategy_over(config, grid)
    messages = list(strategy.configure_train(1, strategy.global_arrays, ConfigRecord(), grid))
    strategy.aggregate_train(1, [answer(m, 0.1 * (i + 1), 10)[0] for i, m in enumerate(messages)])
    state = strategy.state_dict()
    restored = strategy_over(config, grid)
    restored.load_state_dict({"meta": json.loads(json.dumps(state["meta"])),
                              "tensors": state["tensors"]})
    for family, tensors in strategy.global_models().items():
        other = restored.global_models()[family]
        assert tensors.keys() == other.keys()
        assert all(np.array_equal(v, other[k]) for k, v in tensors.items())


def evaluated(message, loss, own_loss, num_examples=5):
    message.metadata.__dict__["_message_id"] = f"e{message.metadata.dst_node_id}"
    return Message(RecordDict({"metrics": MetricRecord(
        {"num-examples": num_examples, "eval_loss": loss, "eval_own_loss": own_loss,
         "eval_accuracy": 0.5})}), reply_to=message)


def trained_round(strategy, grid, offsets, server_round=1):
    """A train round whose tiny-bert clients move every tensor by ``offsets[0]`` and the
    wide family's by ``offsets[1]`` (10 examples each)."""
    messages = list(strategy.configure_train(server_round, strategy.global_arrays,
                                             ConfigRecord(), grid))
    by_family = dict(zip(WIDTHS.split(","), offsets))
    strategy.aggregate_train(server_round, [answer(m, by_family[strategy.directory.client_of(
        m.metadata.dst_node_id).family], 10)[0] for m in messages])


@pytest.mark.parametrize("fraction_evaluate", [1.0, 0.0])
def test_the_family_gate_keeps_a_family_s_own_step_when_the_shared_one_hurts_it(
        fraction_evaluate):
    config = hetero(**{"heterotune.cmga": False, "fraction-evaluate": fraction_evaluate})
    grid = LocalGrid.simulation(describe_family, num_nodes=4)
    strategy = strategy_over(config, grid)
    before = {f: dict(t) for f, t in strategy.global_models().items()}
    common = [n for n in before["tiny-bert"] if is_shared(n)]
    trained_round(strategy, grid, (1.0, -2.0))  # shared step: (20 - 40) / 40 = -0.5
    evaluations = list(strategy.configure_evaluate(1, strategy.global_arrays, ConfigRecord(),
                                                   grid))
    assert len(evaluations) == 4  # with fraction-evaluate 0: the round's trainers
    family = {m.metadata.dst_node_id: strategy.directory.client_of(
        m.metadata.dst_node_id).family for m in evaluations}
    for message in evaluations:  # the own candidate: the family's own step on shared tensors
        own = from_array_record(message.content["family-own"])
        sent = from_array_record(message.content["arrays"])
        step = 1.0 if family[message.metadata.dst_node_id] == "tiny-bert" else -2.0
        for name in common:
            np.testing.assert_allclose(own[name], before["tiny-bert"][name] + step, atol=1e-5)
            np.testing.assert_allclose(sent[name], before["tiny-bert"][name] - 0.5, atol=1e-5)
    # tiny-bert's clients find the shared step worse (1.0 against 0.6 and 0.8), the wide
    # family's find it better; one wide client's broken loss is left out.
    losses = {"tiny-bert": [(1.0, 0.6), (1.0, 0.8)],
              "tiny-bert-w64": [(0.5, 0.7), (0.4, float("nan"))]}
    strategy.aggregate_evaluate(1, [evaluated(m, *losses[family[m.metadata.dst_node_id]].pop(0))
                                    for m in evaluations])
    metrics = strategy.round_metrics()
    assert metrics["family_gate"] == {"tiny-bert": "own", "tiny-bert-w64": "shared"}
    assert metrics["family_gate_losses"] == {"tiny-bert": pytest.approx([1.0, 0.7]),
                                             "tiny-bert-w64": pytest.approx([0.5, 0.7])}
    after = strategy.global_models()
    for name in common:
        np.testing.assert_allclose(after["tiny-bert"][name], before["tiny-bert"][name] + 1.0,
                                   atol=1e-5)
        np.testing.assert_allclose(after["tiny-bert-w64"][name],
                                   before["tiny-bert"][name] - 0.5, atol=1e-5)
    # Round 2: the gated family keeps its copy and takes the next shared step on it.
    state = strategy.state_dict()
    trained_round(strategy, grid, (0.2, 0.2), server_round=2)
    for name in common:
        np.testing.assert_allclose(strategy.global_models()["tiny-bert"][name],
                                   before["tiny-bert"][name] + 1.2, atol=1e-5)
        np.testing.assert_allclose(strategy.global_models()["tiny-bert-w64"][name],
                                   before["tiny-bert"][name] - 0.3, atol=1e-5)
    restored = strategy_over(config, grid)  # the copy survives a restart
    restored.load_state_dict(state)
    for name in common:
        np.testing.assert_allclose(restored.global_models()["tiny-bert"][name],
                                   before["tiny-bert"][name] + 1.0, atol=1e-5)


def test_without_the_family_gate_nothing_extra_is_sent_or_decided():
    config = hetero(**{"heterotune.family-gate": False, "fraction-evaluate": 0.0})
    grid = LocalGrid.simulation(describe_family, num_nodes=4)
    strategy = strategy_over(config, grid)
    trained_round(strategy, grid, (1.0, -2.0))
    assert list(strategy.configure_evaluate(1, strategy.global_arrays, ConfigRecord(),
                                            grid)) == []
    assert "family_gate" not in strategy.round_metrics()


def test_a_family_no_client_scores_keeps_the_shared_step(flwr_warnings):
    config = hetero()
    grid = LocalGrid.simulation(describe_family, num_nodes=4)
    strategy = strategy_over(config, grid)
    trained_round(strategy, grid, (1.0, -2.0))
    shared_before = strategy.global_models()
    evaluations = list(strategy.configure_evaluate(1, strategy.global_arrays, ConfigRecord(),
                                                   grid))
    wide = [m for m in evaluations
            if strategy.directory.client_of(m.metadata.dst_node_id).family == "tiny-bert-w64"]
    strategy.aggregate_evaluate(1, [evaluated(m, 1.0, 0.5) for m in wide])
    assert strategy.round_metrics()["family_gate"] == {"tiny-bert": "unmeasured",
                                                       "tiny-bert-w64": "own"}
    assert any("no client of tiny-bert reported both losses" in line for line in flwr_warnings)
    for name, value in shared_before["tiny-bert"].items():
        assert np.array_equal(strategy.global_models()["tiny-bert"][name], value)


def test_families_are_assigned_round_robin_by_mapping_or_by_node_config():
    config = hetero(**{"family-assignment": "3:tiny-bert"})
    assert [family_of(config, str(i)) for i in range(4)] == [
        "tiny-bert", "tiny-bert-w64", "tiny-bert", "tiny-bert"]
    assert family_of(config, "alice", node_model="tiny-bert-w64") == "tiny-bert-w64"
    with pytest.raises(ConfigError, match="client 'alice' has no family"):
        family_of(config, "alice")
    with pytest.raises(ConfigError, match="'minilm', which is not among the run's models"):
        family_of(config, "0", node_model="minilm")


ACROSS = "tiny-bert,tiny-llama"  # an encoder (hidden 32) and a decoder (hidden 64)


def test_an_encoder_and_a_decoder_share_the_experts_of_their_query_and_value_layers():
    """Across architectures (#34): banks are keyed by attention role, so BERT's query and
    value layers and Llama's q_proj and v_proj use the same experts (equal at the start);
    k/o banks are the decoder's alone; layers align by relative depth, so the
    projections D/U and the heads stay per family. The decoder classifies through a
    ``score`` head, which travels."""
    config = hetero(**{"model-families": ACROSS})
    assert config.method.alignment(config.families) == "relative"
    strategy = strategy_over(config, LocalGrid.simulation(describe_families(ACROSS),
                                                          num_nodes=4)).strategy
    encoder, decoder = (travelling_state(build_model_for(config, f, 4))
                        for f in ACROSS.split(","))
    encoder_banks = sorted(n for n in encoder if is_shared(n))
    decoder_banks = sorted(n for n in decoder if is_shared(n))
    assert {n.split(".")[2] for n in encoder_banks} == {"q", "v"}
    assert {n.split(".")[2] for n in decoder_banks} == {"k", "o", "q", "v"}
    assert set(encoder_banks) < set(decoder_banks)
    for name in encoder_banks:
        assert np.array_equal(encoder[name], decoder[name])
    assert strategy.holds["tiny-bert"] == encoder_banks
    assert strategy.holds["tiny-llama"] == decoder_banks
    assert sorted(strategy.shared) == decoder_banks  # no projection is shared
    assert [n for n in decoder if ".score." in n] == ["backbone.score.weight"]
    ids = torch.randint(0, 1000, (3, 10))
    with torch.no_grad():
        assert build_model_for(config, "tiny-llama", 4)(
            input_ids=ids, attention_mask=torch.ones_like(ids)).logits.shape == (3, 4)


@pytest.mark.parametrize("strategy", ["fedavg-per-family", "hetlora"])
def test_the_lora_baselines_adapt_each_family_s_own_layers(strategy):
    """lora-target-modules left at auto follows each family: an encoder's query/value, a
    decoder's q/k/v/o projections (not the run model's names for every family)."""
    config = run_config({"strategy": strategy, "model-families": ACROSS, "model": "tiny-bert",
                         "hetlora.ranks": "4,8"} if strategy == "hetlora" else
                        {"strategy": strategy, "model-families": ACROSS, "model": "tiny-bert"})
    on_client = run_config(config.client_mapping())  # what a client rebuilds from its message
    for family, modules in [("tiny-bert", {"query", "value"}),
                            ("tiny-llama", {"q_proj", "k_proj", "v_proj", "o_proj"})]:
        for built_by in (config, on_client):
            model = build_model_for(built_by, family, 4)
            assert set(model.peft_config["default"].target_modules) == modules


@pytest.mark.slow  # builds both families' models for two strategies
def test_hetlora_across_an_encoder_and_a_decoder_is_per_family_fedavg():
    """No LoRA tensor or head of one family has a namesake in the other, so HetLoRA
    (ranks 8, 8) shares nothing: the fleets bench's hetlora row is per-family FedAvg."""
    grid = LocalGrid.simulation(describe_families(ACROSS), num_nodes=4)
    models = {}
    for strategy in ("hetlora", "fedavg-per-family"):
        config = run_config({"strategy": strategy, "model-families": ACROSS,
                             "model": "tiny-bert",
                             **({"hetlora.ranks": "8,8"} if strategy == "hetlora" else {})})
        built = strategy_over(config, grid)
        messages = list(built.configure_train(1, built.global_arrays, ConfigRecord(), grid))
        built.aggregate_train(1, [answer(m, 0.5 * (i + 1), 10 * (i + 1))[0]
                                  for i, m in enumerate(messages)])
        models[strategy] = built.global_models()
    for family in ACROSS.split(","):
        ours, theirs = models["hetlora"][family], models["fedavg-per-family"][family]
        assert ours.keys() == theirs.keys()
        for name, value in ours.items():
            np.testing.assert_allclose(value, theirs[name], atol=1e-6)


@pytest.mark.parametrize("overrides, message", [
    ({"model-families": "tiny-bert,gpt-9"}, "unknown model-families entry 'gpt-9'"),
    ({"model-families": "minilm,smollm2", "task": "instruct", "model": "smollm2"},
     "model-families: task 'instruct' needs causal LMs, and minilm is not one; allowed: "
     "smollm2, "),
    ({"model-families": ACROSS, "heterotune.layer-alignment": "absolute"},
     "heterotune.layer-alignment = 'absolute' pairs layer l of every family, but "
     "model-families .* mixes encoders and decoders"),
    ({"heterotune.dema-rank": 0}, "heterotune.dema-rank must be >= 1"),
    ({"strategy": "fedavg"}, "model-families and family-assignment are for the strategies that"),
    ({"family-assignment": "0:minilm"}, "must be client:family with a family of"),
    ({"strategy": "hetlora", "model-families": "minilm-l2,minilm"}, "hetlora.ranks must give"),
])
def test_bad_family_settings_are_refused(overrides, message):
    with pytest.raises(ConfigError, match=message):
        hetero(**overrides)


def test_a_target_module_the_backbone_lacks_is_refused_before_training(tmp_path, topics_csv):
    config = hetero(**{"heterotune.dema-target-modules": "query,gate_proj", "dataset": str(topics_csv),
                       "output-dir": str(tmp_path)})
    with pytest.raises(ConfigError, match=r"heterotune.dema-target-modules: DeMA target modules \['gate_proj'\] are not"):
        run(LocalGrid.simulation(client_app, num_nodes=2), config)
    assert not list(tmp_path.iterdir())  # nothing was started


@pytest.mark.slow  # trains for more than 10 s
def test_two_rounds_across_two_widths_and_the_saved_adapters_reload(tmp_path, topics_csv):
    config = hetero(**{"dataset": str(topics_csv), "lr": 0.05, "local-epochs": 3,
                       "max-seq-len": 16, "partitioner": "iid", "num-server-rounds": 2,
                       "output-dir": str(tmp_path), "run-name": "hetero"})
    outputs = run(LocalGrid.simulation(client_app, num_nodes=4), config)
    rows = outputs.read_metrics()
    assert [r["round"] for r in rows] == [1, 2]
    last = rows[-1]
    assert set(last["family_accuracy"]) == set(WIDTHS.split(","))
    assert last["eval_accuracy"] == pytest.approx(np.mean(list(last["family_accuracy"].values())))
    assert last["eval_accuracy"] > 0.4  # chance is 0.25
    ups = last["family_bytes_up_per_client"]
    assert ups["tiny-bert"] < ups["tiny-bert-w64"]  # the wide family's projections are larger
    assert all(v > 0 for v in last["family_peak_memory_mb"].values())
    assert 0.0 <= last["cmga_conflict_fraction"] <= 1.0
    assert set(last["family_gate"]) == set(WIDTHS.split(","))
    for family, decision in last["family_gate"].items():  # the clients scored both
        shared_loss, own_loss = last["family_gate_losses"][family]
        assert decision == ("own" if own_loss < shared_loss else "shared")
    task = load_task(config)
    for family, accuracy in last["family_accuracy"].items():
        model = load_dema_adapter(outputs.run_dir / "adapters" / family)
        test = torch_dataset(task.server_test, "text", family, config.max_seq_len)
        result = evaluate(model, make_loader(test, 32, shuffle=False, seed=0),
                          torch.device("cpu"))
        assert result.accuracy == pytest.approx(accuracy)


@pytest.mark.slow  # trains for more than 10 s
def test_two_rounds_across_an_encoder_and_a_decoder(tmp_path, topics_csv):
    """tiny-bert (an encoder with its mean-pooled head) and tiny-llama (a decoder with a
    class head on its last token) on one classification task: both scored on the same
    server test split, both above chance, their q/v experts one set of tensors until
    the family gate has a family keep its own step."""
    config = hetero(**{"model-families": ACROSS, "dataset": str(topics_csv), "lr": 0.05,
                       "local-epochs": 3, "max-seq-len": 16, "partitioner": "iid",
                       "num-server-rounds": 2, "output-dir": str(tmp_path),
                       "run-name": "across"})
    outputs = run(LocalGrid.simulation(client_app, num_nodes=4), config)
    rows = outputs.read_metrics()
    last = rows[-1]
    assert set(last["family_accuracy"]) == set(ACROSS.split(","))
    assert min(last["family_accuracy"].values()) > 0.4, last["family_accuracy"]  # chance 0.25
    encoder, decoder = (load_dema_adapter(outputs.run_dir / "adapters" / f)
                        for f in ACROSS.split(","))
    query_experts = "banks.0.q.experts"
    kept_own = any("own" in row["family_gate"].values() for row in rows)
    assert torch.equal(dict(encoder.named_parameters())[query_experts],
                       dict(decoder.named_parameters())[query_experts]) == (not kept_own)


@pytest.mark.slow  # 12-15 s a case: two-family runs
@pytest.mark.parametrize("strategy, families, extra", [
    ("fedavg-per-family", WIDTHS, {}),
    ("hetlora", "minilm-l2,minilm-l4", {"hetlora.ranks": "2,4", "lr": 0.003}),
])
def test_the_baselines_run_in_the_same_code_path(tmp_path, topics_csv, strategy, families,
                                                 extra):
    config = run_config({
        "strategy": strategy, "model-families": families, "dataset": str(topics_csv),
        "lr": 0.05, "local-epochs": 2, "max-seq-len": 16, "partitioner": "iid",
        "num-server-rounds": 1, "output-dir": str(tmp_path), "run-name": strategy, **extra})
    outputs = run(LocalGrid.simulation(client_app, num_nodes=4), config)
    row = outputs.read_metrics()[0]
    assert set(row["family_accuracy"]) == set(families.split(","))
    assert sorted(p.name for p in (outputs.run_dir / "adapters").iterdir()) == sorted(
        families.split(","))
    if strategy == "hetlora":  # the rank-2 family receives the rank-4 global truncated
        down = row["family_bytes_down_per_client"]
        assert down["minilm-l2"] < down["minilm-l4"]
