"""What an LLM training step costs in three loops, on the same prompts (#37).

    python -m bench.llm cost [--quick]

The section 9 setup's training (SmolLM2-135M-Instruct, LoRA r = 8 on q/k/v/o, AdamW
lr 0.001, AG News as generation, max-seq-len 160), on one batch of 8 of its prompts, one
torch thread, in three loops from the same LoRA initialisation:
- pollen: the client's step (``pollen.training.batch_loss``: the output layer runs only
  at the positions that predict a response token);
- peft: a plain peft loop, the model's own loss (``labels`` = the response tokens, the
  rest masked: logits at every position);
- trl: trl's ``SFTTrainer`` on the same (prompt, response) pairs as conversational
  prompt/completion rows, completion-only loss, its own chat-template tokenisation and
  collator; gradient checkpointing, bf16, clipping and the lr schedule off, as in the
  other two loops (trl turns checkpointing on by default). Needs ``pip install
  trl==1.16.0``; without it the row says so.
Each loop takes 2 warm-up steps and then 5 more; the report gives the median of the 5
steps' seconds, real tokens/s (attention-mask tokens) and computed tokens/s (the padded
batch: rows x its longest row), and pollen's step against the plain loop's: above 1.1x
the bench exits non-zero (the issue's regression check). --quick: the tiny random Llama.

Then evaluation: the first EVAL_PROMPTS prompts of the server test split, zero-shot,
batch 8, at section 9's 4 new tokens, two ways on the same model: the old path (in the
split's order, the loss pass, then ``generate`` from each prompt) and Pollen's
(``pollen.instruct.evaluate``: prompts shortest first, the prompts' shared prefix run
once, answers read from the loss's own forward pass, ``greedy_answers``), with their seconds, exact match (equal, or the bench
exits non-zero; tests/test_instruct.py compares the answers themselves) and real against
computed tokens of the loss pass. And padding in training: real/computed tokens of
TRAIN_PROMPTS pool prompts in shuffled batches of 8 (the client's loader) and grouped by
length (transformers' ``LengthGroupedSampler``).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import torch

from bench.common import AG_NEWS, DOCS, write_report

WARM_UP, MEASURED, PROMPTS, MAX_SEQ_LEN, LR = 2, 5, 8, 160, 0.001
EVAL_PROMPTS, TRAIN_PROMPTS, MAX_NEW_TOKENS = 48, 400, 4
SLOWEST_POLLEN_RATIO = 1.1  # pollen's step against the plain peft loop's


def _setup(model_name: str):
    """The run config, PROMPTS (prompt, response) pairs whose whole pair fits
    max-seq-len, and their tokens as Pollen's client trains on them (one batch)."""
    from pollen.data import load_task
    from pollen.instruct import trimmed
    from pollen.models import build_tokenizer
    from pollen.training import torch_dataset
    from strategies import run_config

    config = run_config({"task": "instruct", "model": model_name, "dataset": str(AG_NEWS),
                         "class-names": "World,Sports,Business,Sci/Tech", "lr": LR,
                         "max-seq-len": MAX_SEQ_LEN, "partitioner": "iid", "seed": 0})
    tokenizer = build_tokenizer(model_name)
    pool = load_task(config).pool
    fits = [i for i in range(4 * PROMPTS) if len(tokenizer.apply_chat_template(
        [{"role": "user", "content": pool[i]["prompt"]},
         {"role": "assistant", "content": pool[i]["response"]}], tokenize=True)) < MAX_SEQ_LEN]
    pairs = pool.select(fits[:PROMPTS])
    tokens = torch_dataset(pairs, "instruct", model_name, MAX_SEQ_LEN)
    batch = trimmed({k: torch.stack([row[k] for row in tokens]) for k in
                     ("input_ids", "attention_mask", "labels")})
    return config, tokenizer, pairs, batch


def _timed_steps(step) -> list[float]:
    """Seconds of each of MEASURED steps after WARM_UP."""
    seconds = []
    for _ in range(WARM_UP + MEASURED):
        started = time.perf_counter()
        step()
        seconds.append(time.perf_counter() - started)
    return seconds[WARM_UP:]


def _loop(model, batch: dict[str, torch.Tensor], loss_of) -> list[float]:
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LR)
    model.train()

    def step() -> None:
        loss = loss_of(model, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return _timed_steps(step)


def _pollen_loss(model, batch):
    from pollen.training import batch_loss

    return batch_loss(model, batch, torch.device("cpu"))


def _peft_loss(model, batch):
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                 labels=batch["labels"]).loss


def _trl_steps(model, tokenizer, pairs) -> tuple[list[float], int, int]:
    """(seconds of the measured steps, real tokens, computed tokens) of trl's SFTTrainer
    on ``pairs`` as one batch a step."""
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    rows = Dataset.from_dict({
        "prompt": [[{"role": "user", "content": p}] for p in pairs["prompt"]],
        "completion": [[{"role": "assistant", "content": r}] for r in pairs["response"]]})
    seconds: list[float] = []

    class StepClock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            self.started = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            seconds.append(time.perf_counter() - self.started)

    with tempfile.TemporaryDirectory() as out:
        trainer = SFTTrainer(model=model, processing_class=tokenizer, train_dataset=rows,
                             callbacks=[StepClock()], args=SFTConfig(
                                 output_dir=out, max_steps=WARM_UP + MEASURED,
                                 per_device_train_batch_size=PROMPTS, learning_rate=LR,
                                 lr_scheduler_type="constant", completion_only_loss=True,
                                 max_length=MAX_SEQ_LEN, gradient_checkpointing=False,
                                 bf16=False, max_grad_norm=0.0, use_cpu=True,
                                 save_strategy="no", logging_strategy="no", report_to=[],
                                 seed=0))
        lengths = [len(ids) for ids in trainer.train_dataset["input_ids"]]
        trainer.train()
    return seconds[WARM_UP:], sum(lengths), max(lengths) * len(lengths)


def _padding(batches) -> tuple[int, int]:
    """(real, computed) tokens of the loss pass over ``batches`` (each cut to its longest
    row, ``instruct.trimmed``)."""
    from pollen.instruct import trimmed

    real = computed = 0
    for batch in batches:
        mask = trimmed(batch)["attention_mask"]
        real, computed = real + int(mask.sum()), computed + mask.numel()
    return real, computed


def _evaluation(config, tokenizer, model, prompts: int) -> tuple[list[tuple], int]:
    """Rows (path, seconds, exact match, real tokens, computed tokens) of the old and the
    new evaluation of the server test split's first ``prompts`` prompts, and how many of
    them fit max-seq-len (the others are left out); SystemExit when their exact match
    differs."""
    from torch.utils.data import DataLoader

    from pollen.data import load_task
    from pollen.instruct import evaluate, generate, read_label, response_loss
    from pollen.training import make_loader, torch_dataset

    split = load_task(config).server_test.select(range(prompts))
    tokens = torch_dataset(split, "instruct", config.model, MAX_SEQ_LEN)
    labels, device = tuple(config.class_name_list), torch.device("cpu")
    in_order = list(DataLoader(tokens, batch_size=PROMPTS))
    model.eval()
    started = time.perf_counter()
    right = 0
    with torch.no_grad():
        for batch in in_order:
            response_loss(model, batch, device)
            right += sum(read_label(a, labels) == truth for a, truth in zip(
                generate(model, tokenizer, batch, device, MAX_NEW_TOKENS), batch["label"]))
    old_seconds = time.perf_counter() - started
    old_match = right / len(tokens)  # a prompt longer than max-seq-len is not in tokens
    shortest_first = make_loader(tokens, PROMPTS, shuffle=False, seed=0)
    started = time.perf_counter()
    with torch.no_grad():
        result = evaluate(model, shortest_first, device, tokenizer, labels, MAX_NEW_TOKENS)
    new_seconds = time.perf_counter() - started
    if result.accuracy != old_match:
        raise SystemExit(f"the evaluation's exact match {result.accuracy} is not the old "
                         f"path's {old_match}")
    return [("loss pass, then generate (in order)", old_seconds, old_match,
             *_padding(in_order)),
            ("pollen: answers from the loss pass (shortest first)", new_seconds,
             result.accuracy, *_padding(shortest_first))], len(tokens)


def _training_padding(config, model_name: str) -> list[tuple[str, int, int]]:
    """(batching, real, computed) over TRAIN_PROMPTS pool prompts in batches of 8."""
    from transformers.trainer_pt_utils import LengthGroupedSampler

    from pollen.data import load_task
    from pollen.training import make_loader, token_lengths, torch_dataset

    tokens = torch_dataset(load_task(config).pool.select(range(TRAIN_PROMPTS)), "instruct",
                           model_name, MAX_SEQ_LEN)
    grouped = LengthGroupedSampler(PROMPTS, lengths=token_lengths(tokens),
                                   generator=torch.Generator().manual_seed(0))
    return [("shuffled (the client's loader)",
             *_padding(make_loader(tokens, PROMPTS, shuffle=True, seed=0))),
            ("grouped by length (LengthGroupedSampler)",
             *_padding(torch.utils.data.DataLoader(tokens, batch_size=PROMPTS,
                                                   sampler=grouped)))]


def cost(quick: bool, out_dir: Path = DOCS) -> Path:
    """The three loops' table (module docstring); SystemExit when pollen's step is above
    SLOWEST_POLLEN_RATIO x the plain loop's."""
    from pollen.models import build_model

    torch.set_num_threads(1)
    model_name = "tiny-llama" if quick else "smollm2"
    config, tokenizer, pairs, batch = _setup(model_name)
    real = int(batch["attention_mask"].sum())
    computed = batch["input_ids"].numel()
    results = {"pollen": (_loop(build_model(config, 0), batch, _pollen_loss), real, computed),
               "peft": (_loop(build_model(config, 0), batch, _peft_loss), real, computed)}
    try:
        results["trl"] = _trl_steps(build_model(config, 0), tokenizer, pairs)
    except ImportError as missing:
        results["trl"] = None
        trl_note = f"trl: not installed ({missing}); `pip install trl==1.16.0`."
    else:
        trl_note = ""
    lines = [f"{model_name}, LoRA r = 8 on q/k/v/o, AdamW lr {LR}, {PROMPTS} prompts of AG "
             f"News as generation (max-seq-len {MAX_SEQ_LEN}), one torch thread; median of "
             f"{MEASURED} steps after {WARM_UP} warm-up steps.", "",
             "| loop | s per step (median) | steps (s) | real tokens | computed tokens | "
             "real tokens/s | computed tokens/s |", "|---|---|---|---|---|---|---|"]
    medians = {}
    for name, result in results.items():
        if result is None:
            continue
        seconds, real_tokens, computed_tokens = result
        medians[name] = statistics.median(seconds)
        lines.append(f"| {name} | {medians[name]:.2f} | "
                     f"{', '.join(f'{s:.2f}' for s in seconds)} | {real_tokens} | "
                     f"{computed_tokens} | {real_tokens / medians[name]:.0f} | "
                     f"{computed_tokens / medians[name]:.0f} |")
    ratio = medians["pollen"] / medians["peft"]
    lines += ["", f"pollen's step / the plain peft loop's: {ratio:.2f}x (regression bound "
              f"{SLOWEST_POLLEN_RATIO}x)" + (f"; trl's / pollen's: "
                                             f"{medians['trl'] / medians['pollen']:.2f}x"
                                             if "trl" in medians else ""), trl_note]
    prompts = PROMPTS if quick else EVAL_PROMPTS
    evaluation, kept = _evaluation(config, tokenizer, build_model(config, 0), prompts)
    lines += [f"Evaluation of the server test split's first {prompts} prompts ({kept} fit "
              f"max-seq-len; zero-shot, batch {PROMPTS}, {MAX_NEW_TOKENS} new tokens):", "",
              "| path | seconds | exact match | real tokens | computed tokens | real/computed |",
              "|---|---|---|---|---|---|"]
    lines += [f"| {path} | {seconds:.1f} | {match:.3f} | {real} | {computed} | "
              f"{real / computed:.3f} |" for path, seconds, match, real, computed in evaluation]
    lines += ["", f"new / old: {evaluation[1][1] / evaluation[0][1]:.2f}x", "",
              f"Padding in training, {TRAIN_PROMPTS} pool prompts in batches of {PROMPTS}:",
              "", "| batches | real tokens | computed tokens | real/computed |",
              "|---|---|---|---|"]
    lines += [f"| {name} | {real} | {computed} | {real / computed:.3f} |"
              for name, real, computed in _training_padding(config, model_name)]
    report = write_report(f"llm-cost{'-quick' if quick else ''}",
                          "An LLM training step in three loops (#37)",
                          f"python -m bench.llm cost{' --quick' if quick else ''}",
                          "\n".join(lines), out_dir)
    if ratio > SLOWEST_POLLEN_RATIO:
        raise SystemExit(f"pollen's step is {ratio:.2f}x the plain peft loop's, above "
                         f"{SLOWEST_POLLEN_RATIO}x")
    return report
