"""Instruction tuning of causal LMs: prompts, chat-template tokenisation with the loss on
the response only, and evaluation by response loss, perplexity and exact match.

A table becomes (prompt, response) pairs in one of two ways:
- instruction data: ``response-column`` holds the response; the prompt is
  ``instruction-column``, followed by ``input-column`` after a blank line when that column
  exists and is not empty (Alpaca's columns by default);
- classification as generation: a table without the response column but with
  ``label-column``; the prompt asks for one of the label names (``class-names``) and the
  response is the label's name. Exact-match accuracy and macro-F1 are then read from
  greedy generation.
A ``label-column`` in instruction data is kept for partitioning (Dirichlet, pathological).

Each pair goes through the model's own chat template (``apply_chat_template``): the
prompt as the user turn, the response as the assistant turn. The loss is on the tokens
after the prompt rendered with ``add_generation_prompt`` (the response and its
end-of-turn token), found by the prompt's own token length, so any template works as long
as the rendered prompt is a prefix of the rendered pair (checked).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from logging import WARNING

import datasets
import pandas as pd
import torch
from flwr.common.logger import log
from torch import nn
from torch.utils.data import DataLoader
from transformers.utils import ModelOutput

from pollen.errors import ConfigError
from pollen.metrics import predicted_class_max_share

IGNORE_INDEX = -100  # label of a token the loss skips (prompt, padding): torch's default
TOKEN_COLUMNS = ("input_ids", "attention_mask", "labels")


def classification_prompt(text: str, label_names: tuple[str, ...]) -> str:
    return (f"Classify the text into one of these categories: {', '.join(label_names)}.\n\n"
            f"Text: {text}\n\nAnswer with the category only.")


def instruction_pairs(frame: pd.DataFrame, instruction_column: str, input_column: str,
                      response_column: str, source: str) -> tuple[list[str], list[str]]:
    """(prompts, responses) of an instruction table."""
    columns = [str(c) for c in frame.columns]
    if instruction_column not in columns:
        raise ConfigError(f"instruction column '{instruction_column}' not found in {source}; "
                          f"its columns are: {', '.join(columns)}")
    if len(frame) == 0:
        raise ConfigError(f"{source} holds no rows")
    instructions = frame[instruction_column].astype(str).tolist()
    inputs = (frame[input_column].fillna("").astype(str).tolist() if input_column in columns
              else [""] * len(frame))
    prompts = [f"{i}\n\n{x}" if x.strip() else i for i, x in zip(instructions, inputs)]
    return prompts, frame[response_column].astype(str).tolist()


def is_instruction_table(frame: pd.DataFrame, response_column: str) -> bool:
    return response_column in [str(c) for c in frame.columns]


def tokenise(split: datasets.Dataset, tokenizer, max_seq_len: int) -> datasets.Dataset:
    """Token ids of prompt + response through the chat template, padded on the right to
    ``max_seq_len`` (``trimmed`` cuts each batch to its longest row), with ``labels`` =
    the ids on response tokens and IGNORE_INDEX elsewhere. A pair longer than
    ``max_seq_len`` is cut at the end; a pair whose prompt alone fills it has no
    response token and is left out, with a warning that counts them."""
    pad_id = pad_token_id(tokenizer)

    def encode(row: dict) -> dict:
        prompt = prompt_ids(tokenizer, row["prompt"])
        full = _ids(tokenizer, [{"role": "user", "content": row["prompt"]},
                                {"role": "assistant", "content": row["response"]}])
        if full[:len(prompt)] != prompt:
            raise ConfigError("the tokenizer's chat template does not render the prompt as a "
                              "prefix of prompt + response, so the response tokens cannot "
                              "be found")
        full = full[:max_seq_len]
        length, padding = len(full), max_seq_len - len(full)
        return {"input_ids": full + [pad_id] * padding,
                "attention_mask": [1] * length + [0] * padding,
                "labels": ([IGNORE_INDEX] * min(len(prompt), length) + full[len(prompt):]
                           + [IGNORE_INDEX] * padding),
                "prompt_length": min(len(prompt), length)}

    encoded = split.map(encode, remove_columns=["prompt", "response"])
    kept = encoded.filter(lambda row: row["prompt_length"] < max_seq_len)
    if len(kept) < len(encoded):
        log(WARNING, "%d of %d examples have a prompt of %d tokens or more (max-seq-len) and "
            "no response token left: they are left out", len(encoded) - len(kept),
            len(encoded), max_seq_len)
    if len(kept) == 0:
        raise ConfigError(f"every prompt fills max-seq-len = {max_seq_len} tokens: raise it")
    columns = [*TOKEN_COLUMNS, "prompt_length"] + (["label"] if "label" in kept.column_names
                                                   else [])
    return kept.with_format("torch", columns=columns)


def prompt_ids(tokenizer, prompt: str) -> list[int]:
    """The prompt as the user turn, rendered up to where the assistant's answer begins."""
    return _ids(tokenizer, [{"role": "user", "content": prompt}], add_generation_prompt=True)


def _ids(tokenizer, messages: list[dict], add_generation_prompt: bool = False) -> list[int]:
    rendered = tokenizer.apply_chat_template(messages, tokenize=False,
                                             add_generation_prompt=add_generation_prompt)
    return tokenizer(rendered, add_special_tokens=False)["input_ids"]


def pad_token_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else \
        tokenizer.eos_token_id


def trimmed(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A right-padded batch cut to its longest row (no compute on all-padding columns)."""
    width = int(batch["attention_mask"].sum(dim=1).max())
    return {k: v[:, :width] if k in TOKEN_COLUMNS else v for k, v in batch.items()}


def response_forward(model: nn.Module, batch: dict[str, torch.Tensor], device: torch.device,
                     params: dict[str, torch.Tensor] | None = None, use_cache: bool = False,
                     share_prefix: bool = False) -> tuple[ModelOutput, torch.Tensor]:
    """The model's output on the (trimmed) batch with logits only at the positions that
    predict a response token in some row, [rows, positions, vocabulary], and the targets
    there, [rows, positions] (IGNORE_INDEX where a row has no response token); with
    ``params``, through ``torch.func.functional_call`` with those tensors in place; with
    ``use_cache``, the output keeps the key-value cache of every position.

    The LM head runs only at those positions (transformers' ``logits_to_keep``): the
    model's own loss would first compute the vocabulary logits of every position,
    prompts included (for SmolLM2, 49,152 floats a token and most of a step's
    activation memory), and throw them away.

    With ``share_prefix`` (no gradients), the leading tokens every row shares
    (``shared_prefix_length``: the chat template's system turn and a task's fixed
    instruction, some 40 of section 9's 120-token prompts) run once, for one row, and
    their key-value cache is repeated for the rest: causal attention makes a position's
    keys and values depend on the tokens before it only, so the rows' outputs are those
    of the whole pass up to float rounding."""
    batch = trimmed(batch)
    targets = batch["labels"][:, 1:].to(device)  # position t predicts token t + 1
    keep = (targets != IGNORE_INDEX).any(dim=0).nonzero().squeeze(1)

    def forward(**inputs):
        return (model(**inputs) if params is None
                else torch.func.functional_call(model, params, args=(), kwargs=inputs))

    ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
    shared = shared_prefix_length(batch) if share_prefix else 0
    inputs = {"attention_mask": mask, "use_cache": use_cache}
    if shared:
        cache = forward(input_ids=ids[:1, :shared], use_cache=True).past_key_values
        cache.batch_repeat_interleave(len(ids))
        inputs["past_key_values"] = cache
    output = forward(input_ids=ids[:, shared:], logits_to_keep=keep - shared, **inputs)
    return output, targets[:, keep]


def shared_prefix_length(batch: dict[str, torch.Tensor]) -> int:
    """How many leading tokens every row of the batch holds alike, stopping short of the
    shortest prompt's last token (the position that predicts a response's first token
    stays in the rest of the pass); 0 for a single row."""
    ids, mask = batch["input_ids"], batch["attention_mask"]
    if len(ids) < 2:
        return 0
    alike = ((ids == ids[:1]).all(dim=0) & (mask == 1).all(dim=0)).long()
    return max(0, min(int(alike.cumprod(dim=0).sum()),
                      int(batch["prompt_length"].min()) - 1))


def response_loss(model: nn.Module, batch: dict[str, torch.Tensor], device: torch.device,
                  params: dict[str, torch.Tensor] | None = None) -> tuple[torch.Tensor, int]:
    """(mean cross-entropy over the batch's response tokens, their count), from
    ``response_forward``."""
    output, targets = response_forward(model, batch, device, params)
    return _cross_entropy(output.logits, targets), int((targets != IGNORE_INDEX).sum())


def _cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(logits.float().flatten(0, 1), targets.flatten(),
                                       ignore_index=IGNORE_INDEX)


def normalised(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).strip()


def read_label(answer: str, label_names: tuple[str, ...]) -> int:
    """The label whose normalised name the normalised answer starts with (the longest such
    name), or -1 when none does."""
    answer = normalised(answer)
    matches = [(len(normalised(n)), i) for i, n in enumerate(label_names)
               if normalised(n) and (answer == normalised(n)
                                     or answer.startswith(normalised(n) + " "))]
    return max(matches)[1] if matches else -1


@dataclass(frozen=True)
class InstructResult:
    loss: float  # mean cross-entropy per response token
    accuracy: float | None  # exact match of greedy generation (label-as-response data)
    num_examples: int
    macro_f1: float | None = None
    predicted_class_max_share: float | None = None  # of the read labels (-1: unreadable)

    @property
    def perplexity(self) -> float:
        import math

        return math.exp(min(self.loss, 50.0))


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, device: torch.device, tokenizer,
             label_names: tuple[str, ...] | None, max_new_tokens: int) -> InstructResult:
    """Response loss over all response tokens; with ``label_names`` (label-as-response
    data) also the greedy answer of at most ``max_new_tokens`` to each prompt
    (``greedy_answers``, from the same forward pass), read by ``read_label``, scored by
    exact match and macro-F1 (an unreadable answer is wrong)."""
    from sklearn.metrics import f1_score

    model.to(device).eval()
    total, tokens, count, truth, predicted = 0.0, 0, 0, [], []
    for batch in loader:
        output, targets = response_forward(model, batch, device, use_cache=bool(label_names),
                                           share_prefix=True)
        response_tokens = int((targets != IGNORE_INDEX).sum())
        total += float(_cross_entropy(output.logits, targets)) * response_tokens
        tokens += response_tokens
        count += len(batch["input_ids"])
        if label_names:
            truth += batch["label"].tolist()
            predicted += [read_label(a, label_names) for a in
                          greedy_answers(model, tokenizer, batch, device, max_new_tokens,
                                         output, targets)]
    if count == 0:
        raise ValueError("cannot evaluate on an empty split")
    if not label_names:
        return InstructResult(total / max(tokens, 1), None, count)
    accuracy = sum(t == p for t, p in zip(truth, predicted)) / count
    f1 = f1_score(truth, predicted, labels=list(range(len(label_names))), average="macro",
                  zero_division=0.0)
    return InstructResult(total / max(tokens, 1), accuracy, count, float(f1),
                          predicted_class_max_share(predicted))


def greedy_answers(model: nn.Module, tokenizer, batch: dict[str, torch.Tensor],
                   device: torch.device, max_new_tokens: int, output: ModelOutput,
                   targets: torch.Tensor) -> list[str]:
    """What ``generate`` answers to each prompt of the batch, read from the teacher-forced
    pass over prompt + reference response (``response_forward`` with its cache).

    Greedy decoding is deterministic given its prefix: as long as the argmax at response
    position k equals reference token k, greedy generation would have produced that
    token, so the pass verifies the reference as a draft (speculative decoding with the
    reference as the draft model). A row's answer is settled at a generated stop token
    or after ``max_new_tokens``; a row whose argmax leaves the reference (that argmax is
    the generated token) or outlives it decodes on from the pass's key-value cache,
    which holds its prompt and verified prefix already (``_decode_on``). So no prompt is
    run twice, where loss then ``generate`` runs each prompt twice. transformers'
    assisted and prompt-lookup decoding verify drafts the same way but for one sequence
    at a time, and its ``generate`` cannot start from a right-padded cache."""
    stop_ids = _stop_token_ids(model, tokenizer)
    predicted = output.logits.argmax(dim=-1).cpu()
    answers, unsettled = [], []
    for row, row_targets in enumerate(targets.cpu()):
        positions = (row_targets != IGNORE_INDEX).nonzero().squeeze(1)
        generated: list[int] = []
        for token, reference in zip(predicted[row, positions].tolist(),
                                    row_targets[positions].tolist()):
            generated.append(token)
            if token in stop_ids or len(generated) == max_new_tokens:
                break
            if token != reference:  # generation goes on from a prefix the pass has not seen
                unsettled.append(row)
                break
        else:  # the reference ran out first (a response cut at max-seq-len)
            unsettled.append(row)
        answers.append(generated)
    if unsettled:
        _decode_on(model, output.past_key_values, [answers[row] for row in unsettled],
                   [int(batch["prompt_length"][row]) for row in unsettled],
                   torch.tensor(unsettled), device, max_new_tokens, stop_ids)
    return tokenizer.batch_decode(answers, skip_special_tokens=True)


@torch.no_grad()
def _decode_on(model: nn.Module, cache, answers: list[list[int]], prompt_lengths: list[int],
               rows: torch.Tensor, device: torch.device, max_new_tokens: int,
               stop_ids: set[int]) -> None:
    """Greedy decoding of ``rows`` of a right-padded batch from its key-value ``cache``,
    extending each of ``answers`` in place. Row i's cache is valid for its prompt and all
    but the last of its answer tokens (the reference tokens the pass verified); the last
    is fed next at the position after them, and each step appends one key column that the
    attention mask opens for its row only."""
    cache.batch_select_indices(rows.to(device))
    width = cache.get_seq_length()
    valid = torch.tensor([n + len(a) - 1 for n, a in zip(prompt_lengths, answers)])
    mask = (torch.arange(width)[None, :] < valid[:, None]).long()
    current = torch.tensor([a[-1] for a in answers])
    finished = [False] * len(answers)
    for step in range(max_new_tokens):
        mask = torch.cat([mask, torch.ones(len(answers), 1, dtype=torch.long)], dim=1)
        logits = model(input_ids=current[:, None].to(device), attention_mask=mask.to(device),
                       position_ids=(valid + step)[:, None].to(device),
                       past_key_values=cache, use_cache=True).logits
        current = logits[:, -1].argmax(dim=-1).cpu()
        for i, token in enumerate(current.tolist()):
            if not finished[i]:
                answers[i].append(token)
                finished[i] = token in stop_ids or len(answers[i]) == max_new_tokens
        if all(finished):
            return


def _stop_token_ids(model: nn.Module, tokenizer) -> set[int]:
    """The token ids greedy generation stops at: the model's generation config's eos
    (what ``model.generate`` stops at), else the tokenizer's."""
    config = getattr(model, "generation_config", None)
    eos = config.eos_token_id if config is not None else None
    if eos is None:
        eos = tokenizer.eos_token_id
    return set(eos) if isinstance(eos, list) else {eos}


def generate(model: nn.Module, tokenizer, batch: dict[str, torch.Tensor],
             device: torch.device, max_new_tokens: int) -> list[str]:
    """Greedy answers to the batch's prompts (its first ``prompt_length`` tokens), left-
    padded as decoder-only generation needs."""
    prompts = [ids[:n] for ids, n in zip(batch["input_ids"].tolist(),
                                         batch["prompt_length"].tolist())]
    width, pad_id = max(len(p) for p in prompts), pad_token_id(tokenizer)
    input_ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    output = model.generate(input_ids=input_ids.to(device), attention_mask=mask.to(device),
                            max_new_tokens=max_new_tokens, do_sample=False,
                            pad_token_id=pad_id)
    return tokenizer.batch_decode(output[:, width:], skip_special_tokens=True)
