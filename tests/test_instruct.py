"""Instruction tuning of causal LMs: data, chat-template masking, the response loss,
reading labels from generation, the config, and whole runs on a tiny random Llama."""

import json
import math

import numpy as np
import pytest
import torch

from client_app.app import app as client_app
from pollen.adapters import travelling_state
from pollen.config import ConfigError
from pollen.data import client_split, load_task
from pollen.instruct import IGNORE_INDEX, read_label, response_loss
from pollen.models import build_model, build_tokenizer
from pollen.training import make_loader, torch_dataset
from server_app.app import run
from strategies import run_config
from tests.localgrid import LocalGrid

TOPIC_NAMES = "Money,Music,Space,Sport"  # the sorted labels: money, music, space, sport
TINY_LLM = {"task": "instruct", "model": "tiny-llama", "max-seq-len": 96, "lr": 0.01,
            "local-epochs": 1, "partitioner": "iid", "class-names": TOPIC_NAMES}


@pytest.fixture(scope="module")
def instructions(tmp_path_factory):
    rows = [{"instruction": f"Add {a} and {b}.", "input": "" if a % 2 else "Show the sum.",
             "output": str(a + b)} for a in range(20) for b in range(3)]
    path = tmp_path_factory.mktemp("instruct") / "sums.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_a_labelled_table_becomes_classification_as_generation(topics_csv):
    config = run_config({**TINY_LLM, "dataset": str(topics_csv)})
    task = load_task(config)
    assert task.modality == "instruct" and task.response_labels == tuple(TOPIC_NAMES.split(","))
    row = task.pool[0]
    assert row["response"] == task.response_labels[row["label"]]
    assert "Money, Music, Space, Sport" in row["prompt"]


def test_instruction_data_keeps_its_pairs_and_needs_iid_without_labels(instructions):
    config = run_config({**TINY_LLM, "dataset": str(instructions)})
    task = load_task(config)
    assert task.label_names == () and task.response_labels == ()
    prompts = {row["prompt"]: row["response"] for split in (task.pool, task.server_test)
               for row in split}
    assert len(prompts) == 60 and len(task.server_test) == 12
    assert prompts["Add 2 and 1.\n\nShow the sum."] == "3"
    assert prompts["Add 3 and 1."] == "4"  # an empty input adds nothing
    with pytest.raises(ConfigError, match="partitioner 'dirichlet' splits by the label"):
        client_split(task, config.replace(partitioner="dirichlet"), 0, 2)


def test_a_table_with_neither_response_nor_label_is_named(tmp_path):
    path = tmp_path / "notes.jsonl"
    path.write_text("".join(json.dumps({"title": f"t{i}", "body": f"b{i}"}) + "\n"
                            for i in range(10)))
    with pytest.raises(ConfigError, match="needs a response column 'output' .* or a label "
                                          "column 'label'"):
        load_task(run_config({**TINY_LLM, "dataset": str(path)}))


def test_the_loss_masks_exactly_the_prompt_rendered_by_the_chat_template(topics_csv):
    tokenizer = build_tokenizer("tiny-llama")
    config = run_config({**TINY_LLM, "dataset": str(topics_csv)})
    task = load_task(config)
    tokens = torch_dataset(task.pool.select(range(4)), "instruct", "tiny-llama", 96)
    for row, raw in zip(tokens, task.pool.select(range(4))):
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": raw["prompt"]}],
                                               tokenize=False, add_generation_prompt=True)
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        length = int(row["attention_mask"].sum())
        labels = row["labels"].tolist()
        assert row["prompt_length"] == len(prompt_ids)
        assert row["input_ids"][:len(prompt_ids)].tolist() == prompt_ids
        assert labels[:len(prompt_ids)] == [IGNORE_INDEX] * len(prompt_ids)
        assert labels[len(prompt_ids):length] == row["input_ids"][len(prompt_ids):length].tolist()
        assert set(labels[length:]) <= {IGNORE_INDEX}
        answer = tokenizer.decode(row["input_ids"][len(prompt_ids):length])
        assert answer.startswith(raw["response"]) and "<|im_end|>" in answer


def test_the_response_loss_is_the_cross_entropy_of_the_response_tokens_alone(topics_csv):
    config = run_config({**TINY_LLM, "dataset": str(topics_csv)})
    model = build_model(config, 4).eval()
    tokens = torch_dataset(load_task(config).pool.select(range(3)), "instruct",
                           "tiny-llama", 96)
    batch = next(iter(make_loader(tokens, 3, False, 0)))
    with torch.no_grad():
        loss, count = response_loss(model, batch, torch.device("cpu"))
        logits = model(input_ids=batch["input_ids"],
                       attention_mask=batch["attention_mask"]).logits
    by_hand, n = 0.0, 0
    for i in range(3):
        for t in range(1, batch["input_ids"].shape[1]):
            if batch["labels"][i, t] != IGNORE_INDEX:  # token t is predicted at t - 1
                by_hand -= torch.log_softmax(logits[i, t - 1], -1)[batch["labels"][i, t]].item()
                n += 1
    assert count == n and n > 0
    assert float(loss) == pytest.approx(by_hand / n, rel=1e-5)


def test_evaluation_reads_prompts_shortest_first_and_scores_the_same(topics_csv):
    """An unshuffled instruct loader orders rows by length, so trimmed batches compute
    fewer padding tokens, and the evaluation's loss and exact match are unchanged."""
    from torch.utils.data import DataLoader

    from pollen.instruct import evaluate, trimmed

    config = run_config({**TINY_LLM, "dataset": str(topics_csv)})
    model = build_model(config, 4).eval()
    tokens = torch_dataset(load_task(config).pool.select(range(24)), "instruct",
                           "tiny-llama", 96)
    as_stored = DataLoader(tokens, batch_size=4)
    ordered = make_loader(tokens, 4, False, 0)
    lengths = [int(n) for batch in ordered for n in batch["attention_mask"].sum(dim=1)]
    assert lengths == sorted(lengths)
    assert sorted(tuple(b.tolist()) for batch in ordered for b in batch["input_ids"]) == \
        sorted(tuple(b.tolist()) for batch in as_stored for b in batch["input_ids"])

    def computed(loader):
        return sum(trimmed(batch)["input_ids"].numel() for batch in loader)

    assert computed(ordered) < computed(as_stored)
    tokenizer = build_tokenizer("tiny-llama")
    names = tuple(config.class_name_list)
    before = evaluate(model, as_stored, torch.device("cpu"), tokenizer, names, 4)
    after = evaluate(model, ordered, torch.device("cpu"), tokenizer, names, 4)
    assert after.loss == pytest.approx(before.loss, rel=1e-5)
    assert (after.accuracy, after.num_examples) == (before.accuracy, before.num_examples)


@pytest.mark.parametrize("answer, expected", [
    ("Sport", 3), (" sport.\n", 3), ("SPACE station", 2), ("Sci/Tech", 4), ("sci tech!", 4),
    ("Sporting", -1), ("The topic is Sport", -1), ("", -1)])
def test_a_label_is_read_by_normalised_prefix_match(answer, expected):
    assert read_label(answer, ("Money", "Music", "Space", "Sport", "Sci/Tech")) == expected


def test_causal_models_take_their_own_defaults_and_refuse_what_does_not_apply():
    config = run_config({"task": "instruct", "model": "smollm2"})
    assert config.lr == 0.001 and config.batch_size == 8
    assert config.target_modules == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert run_config({"model": "minilm"}).target_modules == ["query", "value"]
    with pytest.raises(ConfigError, match="strategy 'mosaic' does not run task 'instruct'"):
        run_config({"task": "instruct", "model": "tiny-llama", "strategy": "mosaic"})


def test_the_cosine_schedule_is_flowertune_s():
    config = run_config({"lr-schedule": "cosine", "lr": 0.01, "lr-min": 0.001,
                         "num-server-rounds": 4})
    lrs = [config.round_lr(r) for r in range(1, 5)]
    assert lrs[-1] == pytest.approx(0.001)
    assert lrs[0] == pytest.approx(0.001 + 0.5 * 0.009 * (1 + math.cos(math.pi / 4)))
    assert all(a > b for a, b in zip(lrs, lrs[1:]))
    with pytest.raises(ConfigError, match="lr-min .* must be below lr"):
        run_config({"lr-schedule": "cosine", "lr": 0.001, "lr-min": 0.01})


def test_a_decoder_with_a_classification_task_is_a_sequence_classifier(topics_csv, tmp_path):
    """task classify with a decoder (#34): transformers' LlamaForSequenceClassification
    around it, a class head ``score`` that trains and travels with the LoRA tensors, and
    accuracy on the server's test split."""
    config = run_config({"model": "tiny-llama", "dataset": str(topics_csv), "lr": 0.05,
                         "max-seq-len": 16, "partitioner": "iid", "num-server-rounds": 1,
                         "local-epochs": 2, "output-dir": str(tmp_path), "run-name": "d"})
    assert config.target_modules == ["q_proj", "k_proj", "v_proj", "o_proj"]
    model = build_model(config, 4)
    assert type(model.base_model.model).__name__ == "LlamaForSequenceClassification"
    assert any(".score." in name for name in travelling_state(model))
    row = run(LocalGrid.simulation(client_app, 2), config).read_metrics()[0]
    assert row["eval_accuracy"] > 0.4  # chance is 0.25


@pytest.mark.slow
def test_two_fedavg_rounds_of_a_tiny_llama_report_every_instruct_metric(topics_csv, tmp_path,
                                                                       capsys):
    config = run_config({**TINY_LLM, "dataset": str(topics_csv), "num-server-rounds": 2,
                         "max-steps": 6, "wire-dtype": "bfloat16",
                         "output-dir": str(tmp_path), "run-name": "llm",
                         "lr-schedule": "cosine", "lr-min": 0.005})
    outputs = run(LocalGrid.simulation(client_app, 2), config)
    rows = outputs.read_metrics()
    assert [r["round"] for r in rows] == [1, 2]
    from pollen.adapters import travelling_state

    lora_values = sum(v.size for v in travelling_state(build_model(config, 0)).values())
    assert rows[0]["bytes_up"] == 2 * lora_values * 2  # two replies, 2 bytes a bfloat16
    for row in rows:
        assert row["eval_perplexity"] == pytest.approx(math.exp(row["eval_loss"]))
        assert 0.0 <= row["eval_accuracy"] <= 1.0 and 0.0 <= row["eval_macro_f1"] <= 1.0
        # the clients' mean of exp(loss) is at least exp of their mean loss (Jensen)
        assert math.exp(row["client_loss"]) <= row["client_perplexity"] < math.inf
    assert rows[1]["eval_loss"] < rows[0]["eval_loss"]  # the response loss falls
    adapter = outputs.run_dir / "model"
    assert json.loads((adapter / "adapter_config.json").read_text())["task_type"] == "CAUSAL_LM"
    from safetensors.numpy import load_file

    saved = load_file(adapter / "adapter_model.safetensors")
    assert saved and all(("lora_A" in k or "lora_B" in k) for k in saved)
    assert all(np.isfinite(v).all() for v in saved.values())
    last_round = load_file(outputs.run_dir / "adapters" / "round-2" / "adapter_model.safetensors")
    assert last_round.keys() == saved.keys()
    assert all(np.array_equal(last_round[k], saved[k]) for k in saved)
    assert (outputs.run_dir / "adapters" / "round-1" / "adapter_config.json").is_file()
    check_generate_and_export(outputs.run_dir, config.seed, tmp_path, capsys)


@pytest.mark.slow
def test_a_few_lora_steps_on_the_real_smollm2_lower_its_response_loss(ag_news):
    from pollen.training import train

    config = run_config({"task": "instruct", "model": "smollm2", "dataset": str(ag_news),
                         "class-names": "World,Sports,Business,Sci/Tech", "max-seq-len": 128})
    model = build_model(config, 4)
    assert model.peft_config["default"].target_modules == {"q_proj", "k_proj", "v_proj",
                                                            "o_proj"}
    examples = torch_dataset(load_task(config).pool.select(range(20)), "instruct", "smollm2",
                             128)
    device = torch.device("cpu")

    def loss_on(rows):
        with torch.no_grad():
            batch = next(iter(make_loader(examples.select(rows), len(rows), False, 0)))
            return float(response_loss(model.eval(), batch, device)[0])

    before = loss_on(range(4))
    result = train(model, make_loader(examples, 4, True, 0), epochs=1, lr=config.lr,
                   device=device, max_steps=4)
    assert result.num_examples == len(examples) >= 14  # a prompt over 128 tokens is left out
    after = loss_on(range(4))
    print(f"SmolLM2 response loss on 4 trained examples: {before:.4f} -> {after:.4f}")
    assert after < 0.7 * before


@pytest.mark.slow
def test_evaluation_answers_as_greedy_generation_does(ag_news, monkeypatch):
    """The evaluation's answers (verified against the reference in the loss's forward
    pass and decoded on from its cache, ``greedy_answers``) are greedy generation's
    (``generate``) on real SmolLM2 prompts, with the prompts' shared prefix run once
    (``share_prefix``): with AG News's labels as references, which
    it answers right or wrong, and with its own greedy answers as references, which it
    settles without decoding; at 8 new tokens and at 2 (answers cut short)."""
    from datasets import Dataset
    from torch.utils.data import DataLoader

    from pollen import instruct

    config = run_config({"task": "instruct", "model": "smollm2", "dataset": str(ag_news),
                         "class-names": "World,Sports,Business,Sci/Tech", "max-seq-len": 128})
    model = build_model(config, 4).eval()
    tokenizer = build_tokenizer("smollm2")
    device = torch.device("cpu")
    pool = load_task(config).pool.select(range(12)).filter(  # prompts that fit max-seq-len
        lambda row: len(instruct.prompt_ids(tokenizer, row["prompt"])) < 112)
    decoded_rows = []
    decode_on = instruct._decode_on
    monkeypatch.setattr(instruct, "_decode_on", lambda model, cache, answers, *rest: (
        decoded_rows.append(len(answers)), decode_on(model, cache, answers, *rest)))

    def answers(split, max_new_tokens):
        decoded_rows.clear()
        batch = next(iter(DataLoader(torch_dataset(split, "instruct", "smollm2", 128),
                                     batch_size=len(split))))  # in the split's order
        with torch.no_grad():
            expected = instruct.generate(model, tokenizer, batch, device, max_new_tokens)
            output, targets = instruct.response_forward(model, batch, device, use_cache=True,
                                                        share_prefix=True)
            verified = instruct.greedy_answers(model, tokenizer, batch, device,
                                               max_new_tokens, output, targets)
            whole = instruct.response_forward(model, batch, device)[0].logits
        assert verified == expected
        # the shared system turn and instruction ran once; the logits are the whole pass's
        assert instruct.shared_prefix_length(batch) > 30
        torch.testing.assert_close(output.logits, whole, atol=1e-4, rtol=1e-4)
        return expected, sum(decoded_rows)

    for max_new_tokens in (8, 2):
        labelled, decoded = answers(pool, max_new_tokens)
        right = sum(read_label(a, config.class_name_list) == label for a, label in
                    zip(labelled, pool["label"]))
        assert 0 < right < len(pool)  # right and wrong answers
        assert decoded >= len(pool) - right  # a wrong answer leaves the reference
    own = Dataset.from_dict({"prompt": pool["prompt"], "response": labelled,
                             "label": pool["label"]})
    assert answers(own, 2) == (labelled, 0)


def check_generate_and_export(run_dir, seed, tmp_path, capsys):
    """`pollen generate` answers with the run's final adapter exactly as greedy generation
    from the merged export does, and the export is the base with the adapter merged in."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from pollen.cli import main
    from pollen.instruct import generate, prompt_ids
    from pollen.models import build_backbone

    main(["generate", "--run", str(run_dir), "--prompt", "Hi", "--max-new-tokens", "5",
          "--device", "cpu"])
    answer = capsys.readouterr().out[:-1]  # print's newline
    main(["export", "--run", str(run_dir), "--merged", str(tmp_path / "merged")])
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    tokenizer = build_tokenizer("tiny-llama")
    ids = prompt_ids(tokenizer, "Hi")
    batch = {"input_ids": torch.tensor([ids]), "prompt_length": torch.tensor([len(ids)])}
    adapted = PeftModel.from_pretrained(build_backbone("tiny-llama", 0, seed),
                                        run_dir / "model").eval()
    base = build_backbone("tiny-llama", 0, seed).eval()
    inputs = torch.tensor([ids])
    with torch.no_grad():
        assert generate(merged, tokenizer, batch, torch.device("cpu"), 5)[0] == answer
        merged_logits = merged(input_ids=inputs).logits
        assert torch.allclose(merged_logits, adapted(input_ids=inputs).logits, atol=1e-4)
        assert not torch.allclose(merged_logits, base(input_ids=inputs).logits, atol=1e-3)


def test_generate_refuses_a_classifier_run(tmp_path):
    from pollen.cli import main

    (tmp_path / "config.json").write_text(json.dumps({"task": "classify"}))
    with pytest.raises(SystemExit, match="fine-tuned a classifier"):
        main(["generate", "--run", str(tmp_path), "--prompt", "Hi"])


def test_a_free_form_instruction_run_reports_loss_and_no_accuracy(instructions, tmp_path):
    config = run_config({**TINY_LLM, "dataset": str(instructions), "num-server-rounds": 1,
                         "max-steps": 1, "output-dir": str(tmp_path), "run-name": "sums"})
    outputs = run(LocalGrid.simulation(client_app, 2), config)
    row = outputs.read_metrics()[0]
    assert row["eval_accuracy"] is None and row["client_accuracy"] is None
    assert "eval_macro_f1" not in row and "client_macro_f1" not in row
    assert row["eval_perplexity"] == pytest.approx(math.exp(row["eval_loss"]))
    summary = json.loads((outputs.run_dir / "summary.json").read_text())
    assert summary["final_eval_accuracy"] is None and summary["best_eval_accuracy"] is None
    assert summary["final_eval_loss"] == row["eval_loss"]
    assert (outputs.run_dir / "plot.png").stat().st_size > 1000


def _saved_bytes_and_grads(config, batch):
    """How many tensors autograd keeps outside checkpointed regions in one forward (each
    decoder layer keeps only its input when checkpointed), the loss, and the trainable
    gradients after backward."""
    from pollen.training import batch_loss

    model = build_model(config, 0).train()
    saved = []

    def pack(tensor):
        saved.append(tensor.shape)
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = batch_loss(model, batch, torch.device("cpu"))
    loss.backward()
    return len(saved), loss.item(), {n: p.grad for n, p in model.named_parameters()
                                     if p.requires_grad}


def test_gradient_checkpointing_keeps_less_and_computes_the_same_gradients():
    torch.manual_seed(0)
    ids = torch.randint(0, 1000, (4, 48))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids),
             "labels": torch.where(torch.arange(48) < 20, IGNORE_INDEX, ids)}
    plain = run_config({**TINY_LLM, "dataset": "x.csv"})
    kept, loss, grads = _saved_bytes_and_grads(plain, batch)
    kept_ckpt, loss_ckpt, grads_ckpt = _saved_bytes_and_grads(
        plain.replace(gradient_checkpointing=True), batch)
    assert kept_ckpt < kept / 4  # measured: 12 of 89
    assert loss_ckpt == loss
    for name, grad in grads.items():
        torch.testing.assert_close(grads_ckpt[name], grad)


def test_low_precision_weights_are_refused_on_cpu_and_for_classifiers():
    from pollen.device import node_device

    llm = run_config({**TINY_LLM, "dataset": "x.csv"})
    for key in ("bf16", "load-in-4bit"):
        with pytest.raises(ConfigError, match=f"{key} need\\(s\\) CUDA but this node runs on cpu"):
            node_device(run_config({**TINY_LLM, "dataset": "x.csv", key: True}), "cpu")
        with pytest.raises(ConfigError, match=f"{key} store\\(s\\) a causal LM's frozen"):
            run_config({"model": "tiny-bert", key: True})
    assert node_device(llm, "cpu").type == "cpu"
    with pytest.raises(ConfigError, match="choose one"):
        run_config({**TINY_LLM, "bf16": True, "load-in-4bit": True})
    with pytest.raises(ConfigError, match="gradient-checkpointing recomputes"):
        run_config({"model": "cnn", "gradient-checkpointing": True})


def test_guided_searches_merges_by_the_response_loss(topics_csv):
    from pollen.adapters import load_travelling_state, travelling_state
    from strategies.guided.coefficient_search import CoefficientSearch

    config = run_config({**TINY_LLM, "dataset": str(topics_csv)})
    model = build_model(config, 0)
    tokens = torch_dataset(load_task(config).pool.select(range(12)), "instruct",
                           "tiny-llama", config.max_seq_len)
    search = CoefficientSearch(model, tokens.select(range(8)), tokens.select(range(8, 12)),
                               loss="ce", granularity="vector", steps=3, lr=0.1,
                               batch_size=3, device=torch.device("cpu"))
    base = travelling_state(model)
    rng = np.random.default_rng(0)
    updates = [{k: rng.normal(0, 0.05, v.shape).astype(np.float32) for k, v in base.items()}
               for _ in range(2)]
    outcome = search.merge(base, updates, [1, 3], seed=0)
    assert outcome.holdout_accuracy_average is None and outcome.holdout_accuracy_searched is None
    # The start is the plain average, and L_s is the first search batch's mean
    # cross-entropy per response token there.
    load_travelling_state(model, outcome.plain_average, what="plain average")
    first_batch = next(iter(make_loader(tokens.select(range(8)), 3, True, 0)))
    with torch.no_grad():
        loss = response_loss(model.eval(), first_batch, torch.device("cpu"))[0]
    assert len(outcome.search_losses) == 3
    assert outcome.search_losses[0] == pytest.approx(loss.item(), rel=1e-5)


def test_guided_search_budget_left_at_auto_follows_the_server_data(topics_csv):
    """An LLM's instruction pairs get SEARCH_BUDGET's causal (steps, batch); a key set
    by the user is kept."""
    from strategies.guided.strategy import SEARCH_BUDGET, GuidedMerge

    config = run_config({**TINY_LLM, "dataset": str(topics_csv)})
    model = build_model(config, 0)
    tokens = torch_dataset(load_task(config).pool.select(range(12)), "instruct",
                           "tiny-llama", config.max_seq_len)
    search = GuidedMerge(model=model, search_data=tokens).search
    assert (search.steps, search.batch_size) == SEARCH_BUDGET["causal"] == (8, 8)
    search = GuidedMerge(model=model, search_data=tokens, search_steps=3).search
    assert (search.steps, search.batch_size) == (3, 8)


@pytest.mark.parametrize("strategy", ["guided", "fedmerge"])
@pytest.mark.slow
def test_guided_and_fedmerge_run_on_an_llm(topics_csv, tmp_path, strategy):
    """Guided searches on the server's own instruction file; FedMerge merges LoRA."""
    from pollen.server_data import load_server_data

    server_file = tmp_path / "server.csv"
    server_file.write_text("\n".join(topics_csv.read_text().splitlines()[:41]) + "\n")
    config = run_config({**TINY_LLM, "dataset": str(topics_csv), "strategy": strategy,
                         "num-server-rounds": 1, "max-steps": 3,
                         "server-test-fraction": 0.05, "max-new-tokens": 2,
                         "fraction-evaluate": 0.5, "output-dir": str(tmp_path),
                         "run-name": strategy,
                         **({"server-data": str(server_file), "guided.search-steps": 4}
                            if strategy == "guided" else {})})
    if strategy == "guided":
        held = load_server_data(config, load_task(config))
        assert len(held) == 40 and held.search[0]["response"] in TOPIC_NAMES.split(",")
    row = run(LocalGrid.simulation(client_app, 2), config).read_metrics()[-1]
    assert row["num_replies"] == 2 and 0.0 <= row["eval_accuracy"] <= 1.0
    if strategy == "guided":
        assert row["guided_atlas_size"] == 2
        assert row["guided_search_steps"] == len(row["guided_search_losses"]) == 4
        assert row["guided_holdout_accuracy_average"] is None
    else:
        assert math.isfinite(row["personalized_accuracy"])


def test_fedmerge_on_lora_weighs_every_tensor_and_starts_from_the_frozen_model(topics_csv):
    from pollen.adapters import travelling_state
    from strategies import build_strategy
    from strategies.directory import ClientDirectory
    from strategies.spec import ServerSetup
    from tests.test_strategies import describe_only

    def build(**keys):
        config = run_config({**TINY_LLM, "dataset": str(topics_csv), "strategy": "fedmerge",
                             **keys})
        model = build_model(config, 0)
        grid = LocalGrid.simulation(describe_only, 2)
        directory = ClientDirectory(config.to_mapping(), timeout=10)
        directory.refresh(grid, strict=True)
        return build_strategy(ServerSetup(config, directory, {config.model: model},
                                          {config.model: travelling_state(model)}, 4,
                                          "instruct", None)).strategy

    strategy = build()
    assert strategy.w_tensors == "all"
    names = list(strategy.thetas[0])
    assert names and all("lora_" in n for n in names)
    for name in names:
        values = [theta[name] for theta in strategy.thetas]
        if "lora_B" in name:
            assert all(not v.any() for v in values)
        else:
            assert not np.array_equal(values[0], values[1])
    with pytest.raises(ConfigError, match="w-tensors = head.*no classifier head"):
        build(**{"fedmerge.w-tensors": "head"})


def test_a_depth_family_is_the_first_layers_of_its_base():
    from pollen.models import build_causal_lm

    full, short = build_causal_lm("tiny-llama", 42), build_causal_lm("tiny-llama-l1", 42)
    assert (len(short.model.layers), short.config.num_hidden_layers) == (1, 1)
    kept = short.state_dict()
    assert kept.keys() < full.state_dict().keys()
    assert all(torch.equal(value, full.state_dict()[name]) for name, value in kept.items())
    assert build_tokenizer("tiny-llama-l1") is build_tokenizer("smollm2")


# The three methods across depth families; HetLoRA's ranks follow the families.
DEPTH_FAMILY_RUNS = {"heterotune": {}, "fedavg-per-family": {},
                     "hetlora": {"hetlora.ranks": "4,8"}}


@pytest.mark.slow
@pytest.mark.parametrize("strategy", list(DEPTH_FAMILY_RUNS))
def test_each_family_method_runs_across_depth_families_of_an_llm(strategy, topics_csv,
                                                                   tmp_path):
    from safetensors.torch import load_file

    from pollen.dema.model import load_dema_adapter

    config = run_config({**TINY_LLM, "dataset": str(topics_csv), "strategy": strategy,
                         "model-families": "tiny-llama-l1,tiny-llama",
                         **DEPTH_FAMILY_RUNS[strategy],
                         "num-server-rounds": 1, "max-steps": 3,
                         "server-test-fraction": 0.05, "max-new-tokens": 2,
                         "output-dir": str(tmp_path), "run-name": strategy})
    outputs = run(LocalGrid.simulation(client_app, 2), config)
    row = outputs.read_metrics()[-1]
    assert set(row["family_accuracy"]) == {"tiny-llama-l1", "tiny-llama"}
    if strategy == "heterotune":
        assert 0.0 <= row["cmga_conflict_fraction"] <= 1.0
        model = load_dema_adapter(outputs.run_dir / "adapters" / "tiny-llama-l1")
        assert len(model.backbone.model.layers) == 1
        each_round = load_dema_adapter(outputs.run_dir / "adapters" / "round-1"
                                       / "tiny-llama-l1")
        assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(),
                                                     each_round.state_dict().values()))
        assert model.dema_config.target_modules == ("q_proj", "k_proj", "v_proj", "o_proj")
    else:  # each family's own peft adapter: its layers, its rank
        for family, layers, rank in (("tiny-llama-l1", {"0"}, 4 if strategy == "hetlora"
                                      else 8), ("tiny-llama", {"0", "1"}, 8)):
            tensors = load_file(outputs.run_dir / "adapters" / family
                                / "adapter_model.safetensors")
            assert {name.split("layers.")[1].split(".")[0] for name in tensors} == layers
            assert {t.shape[0] for name, t in tensors.items() if "lora_A" in name} == {rank}
