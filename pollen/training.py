"""Local training and evaluation loops, shared by clients and the server."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import datasets
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from pollen import instruct
from pollen.adapters import load_travelling_state, travelling_state
from pollen.device import autocast
from pollen.metrics import predicted_class_max_share
from pollen.optimizer import LocalOptimizer

TEXT_FEATURES = ("input_ids", "attention_mask", "token_type_ids")


@dataclass(frozen=True)
class TrainResult:
    loss: float  # mean cross-entropy over all local steps (proximal term excluded)
    num_examples: int  # the train split's size (FedAvg's weight)
    seconds: float


@dataclass(frozen=True)
class EvalResult:
    loss: float
    accuracy: float | None  # None: free-form responses, which have no label to match
    num_examples: int
    # Further metrics by name: instruct's perplexity and macro_f1.
    metrics: dict[str, float] = field(default_factory=dict)


def _tokenizer(model_name: str):
    from pollen.models import build_tokenizer

    return build_tokenizer(model_name)


def torch_dataset(split: datasets.Dataset, modality: str, model_name: str,
                  max_seq_len: int) -> datasets.Dataset:
    """The split in torch format: pixels or tokenised text, plus label; for instruct,
    token ids and response labels (``pollen.instruct.tokenise``)."""
    if modality == "image":
        return split.with_format("torch", columns=["pixels", "label"])
    tokenizer = _tokenizer(model_name)
    if modality == "instruct":
        return instruct.tokenise(split, tokenizer, max_seq_len)
    tokenised = split.map(
        lambda batch: tokenizer(batch["text"], truncation=True, max_length=max_seq_len,
                                padding="max_length"),
        batched=True, remove_columns=["text"])
    columns = [c for c in TEXT_FEATURES if c in tokenised.column_names] + ["label"]
    return tokenised.with_format("torch", columns=columns)


def server_dataset(data) -> tuple[torch.utils.data.Dataset, int | None]:
    """Server-held data as Pollen's loops read it, and the batch size it came with: a
    ``datasets.Dataset`` in torch format (Pollen's own) as it is; a torch Dataset of
    (inputs, label) pairs, or a DataLoader over one, as a ``PairDataset``."""
    if isinstance(data, datasets.Dataset):
        return data, None
    if isinstance(data, DataLoader):
        return server_dataset(data.dataset)[0], data.batch_size
    return PairDataset(data), None


def held_out(dataset: torch.utils.data.Dataset, fraction: float, seed: int
             ) -> tuple[torch.utils.data.Subset, torch.utils.data.Subset]:
    """A seeded split of ``dataset`` into the rest and a held-out ``fraction`` (at least
    one example on each side)."""
    if len(dataset) < 2 or not 0 < fraction < 1:
        raise ValueError(f"holding out a fraction {fraction} of {len(dataset)} examples "
                         "leaves a side empty: pass at least 2 examples and a fraction in "
                         "(0, 1), or the held-out data itself")
    count = min(max(1, round(len(dataset) * fraction)), len(dataset) - 1)
    rest, held = torch.utils.data.random_split(
        dataset, [len(dataset) - count, count], torch.Generator().manual_seed(seed))
    return rest, held


def token_lengths(split: datasets.Dataset) -> list[int]:
    """Real tokens (attention-mask ones) of each row of a tokenised split."""
    return [int(sum(mask)) for mask in split.with_format(None)["attention_mask"]]


def make_loader(split: datasets.Dataset, batch_size: int, shuffle: bool,
                seed: int) -> DataLoader:
    """Batches of ``split``, shuffled (seeded) or in order. Unshuffled prompt/response
    pairs (``instruct.tokenise``: what evaluation reads) come shortest first: a batch is
    cut to its longest row (``instruct.trimmed``), so rows of like length compute few
    padding tokens, and every evaluation metric is a sum over examples, which the order
    leaves as it is."""
    if not shuffle and "prompt_length" in getattr(split, "column_names", ()):
        split = split.select(np.argsort(token_lengths(split), kind="stable"))
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(split, batch_size=batch_size, shuffle=shuffle, generator=generator)


INPUTS_KEY = "inputs"  # a pair dataset's inputs, passed to the model positionally


class PairDataset(torch.utils.data.Dataset):
    """A dataset of (inputs, label) pairs, as a torch user holds one, in the dict form
    Pollen's loops read (``inputs``, ``label``): ``logits_of`` calls ``model(inputs)``."""

    def __init__(self, pairs: torch.utils.data.Dataset) -> None:
        self.pairs = pairs

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict:
        inputs, label = self.pairs[index]
        return {INPUTS_KEY: inputs, "label": label}


def logits_of(model: nn.Module, batch: dict[str, torch.Tensor], device: torch.device,
              params: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """The model's logits on a batch: ``model(**features)`` (Hugging Face, Pollen's CNN)
    or, for a ``PairDataset``'s batch, ``model(inputs)``; with ``params`` (module names
    -> tensors), through ``torch.func.functional_call`` with those tensors in place of
    the module's own."""
    features = {k: v.to(device) for k, v in batch.items() if k != "label"}
    args = (features.pop(INPUTS_KEY),) if INPUTS_KEY in features else ()
    if params is None:
        output = model(*args, **features)
    else:
        output = torch.func.functional_call(model, params, args=args, kwargs=features)
    return output.logits if hasattr(output, "logits") else output


def trainable_snapshot(model: nn.Module) -> list[torch.Tensor]:
    """Detached copies of the trainable parameters, in ``model.parameters()`` order."""
    return [p.detach().clone() for p in model.parameters() if p.requires_grad]


def proximal_term(params: list[torch.Tensor], anchor: list[torch.Tensor],
                  mu: float) -> torch.Tensor:
    """(mu/2) * sum ||p - a||^2; its gradient with respect to p is mu * (p - a)."""
    return mu / 2 * sum((p - a).pow(2).sum() for p, a in zip(params, anchor, strict=True))


def calibration_shift(label_counts: np.ndarray, tau: float) -> torch.Tensor:
    """FedLC's logit calibration (Zhang et al., ICML 2022, eq. 9): a client trains on
        softmax(f(x) - tau * n^(-1/4))_y,
    n its per-class train counts, so a class it holds many examples of needs a larger
    margin and one it lacks is barely pushed down. An absent class counts 1e-8 (the
    public FedLC implementations' floor, FL-bench's), which puts its calibrated logit
    100 tau below: its gradient is nearly zero, so a one-class client stops teaching the
    global head that the other classes never occur. Returns the shift tau * n^(-1/4)."""
    counts = np.maximum(np.asarray(label_counts, dtype=np.float64), 1e-8)
    return torch.from_numpy(tau * counts ** -0.25).float()


def balanced_class_weights(label_counts: np.ndarray) -> torch.Tensor:
    """Inverse-frequency class weights, w_c = n / (K n_c) over the K classes a client
    holds (0 for a class it lacks; they average 1 over its examples' classes): its loss
    then weighs each class it holds equally, so a client that is mostly one class still
    teaches the others (the class-balanced loss of King and Zeng's prior correction, as
    FL studies of label imbalance use it). A one-class client is unchanged: its batches'
    weighted mean is the plain one."""
    counts = np.asarray(label_counts, dtype=np.float64)
    held = counts > 0
    weights = np.zeros_like(counts)
    weights[held] = counts.sum() / (held.sum() * counts[held])
    return torch.from_numpy(weights).float()


def label_counts(split: datasets.Dataset, num_classes: int) -> np.ndarray:
    """Examples per class of a split with an integer ``label`` column."""
    return np.bincount(np.asarray(split["label"], dtype=np.int64), minlength=num_classes)


def train(model: nn.Module, loader: DataLoader, *, epochs: int, lr: float,
          device: torch.device, proximal_mu: float = 0.0,
          anchor: list[torch.Tensor] | None = None, seed: int = 0,
          max_steps: int = 0, optimizer: LocalOptimizer = LocalOptimizer(),
          logit_shift: torch.Tensor | None = None,
          class_weight: torch.Tensor | None = None) -> TrainResult:
    """``optimizer`` (AdamW by default) on the trainable parameters for ``epochs`` passes,
    or with ``max_steps`` > 0 for exactly that many steps (passes repeat as needed;
    FlowerTune's ``max-steps``).

    With ``proximal_mu > 0`` the loss gains (mu/2) * ||w - a||^2 over the trainable
    parameters: a = ``anchor`` (a ``trainable_snapshot``) when given, else the values on
    entry (FedProx's proximal term). A classifier's loss reads its logits minus
    ``logit_shift`` (``calibration_shift``) and weighs its examples by ``class_weight``
    (``balanced_class_weights``); the reported loss is that one.
    """
    torch.manual_seed(seed)
    model.to(device).train()
    named_params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    params = [p for _, p in named_params]
    if proximal_mu <= 0:
        anchor = []
    elif anchor is None:
        anchor = trainable_snapshot(model)
    else:
        anchor = [a.to(device) for a in anchor]
    step_rule = optimizer.build(named_params, lr)
    total_loss, steps = 0.0, 0
    start = time.perf_counter()
    for _ in itertools.count() if max_steps else range(epochs):
        for batch in loader:
            with autocast(device):
                loss = batch_loss(model, batch, device, logit_shift, class_weight)
            objective = loss + proximal_term(params, anchor, proximal_mu) if anchor else loss
            step_rule.zero_grad(set_to_none=True)
            objective.backward()
            step_rule.step()
            total_loss += loss.item()
            steps += 1
            if steps == max_steps:
                break
        if steps == max_steps:
            break
    return TrainResult(total_loss / max(steps, 1), len(loader.dataset),
                       time.perf_counter() - start)


@dataclass(frozen=True)
class ServerTraining:
    """The clients' recipe (optimizer, per-round lr, epochs or max-steps, batch size) run
    on the server's own labelled data: ``central``'s whole step, and guided merging's
    server member. ``run`` loads ``start`` into the model's travelling tensors and returns
    them after training, with the mean training loss."""

    model: nn.Module
    dataset: torch.utils.data.Dataset
    epochs: int
    max_steps: int
    round_lr: Callable[[int], float]
    batch_size: int
    optimizer: LocalOptimizer

    @property
    def per_round(self) -> str:
        """How much one ``run`` trains, as ``train`` reads epochs and max-steps."""
        return (f"{self.max_steps} step(s)" if self.max_steps
                else f"{self.epochs} epoch(s)")

    @classmethod
    def of(cls, model: nn.Module | None, data, *, epochs: int, max_steps: int, lr: float,
           batch_size: int, optimizer: str, who: str) -> ServerTraining:
        """The recipe on a Flower user's own pieces: ``model`` (the torch module whose
        trainable parameters the arrays hold) and ``data`` (``server_dataset``); a
        missing piece is a ValueError that says what ``who`` needs."""
        if model is None or data is None:
            raise ValueError(f"{who} trains on the server's own labelled data: pass model= "
                             "(the torch module the arrays belong to) and server_data= (a "
                             "Dataset or DataLoader of (inputs, label) pairs)")
        dataset, loader_batch = server_dataset(data)
        return cls(model, dataset, epochs=epochs, max_steps=max_steps,
                   round_lr=lambda server_round: lr, batch_size=loader_batch or batch_size,
                   optimizer=LocalOptimizer(optimizer))

    def run(self, start: Mapping[str, np.ndarray], server_round: int, seed: int
            ) -> tuple[dict[str, np.ndarray], float]:
        load_travelling_state(self.model, start, what="global model")
        result = train(self.model, make_loader(self.dataset, self.batch_size, shuffle=True,
                                               seed=seed),
                       epochs=self.epochs, lr=self.round_lr(server_round),
                       device=next(self.model.parameters()).device, seed=seed,
                       max_steps=self.max_steps, optimizer=self.optimizer)
        return travelling_state(self.model), result.loss


def batch_loss(model: nn.Module, batch: dict[str, torch.Tensor], device: torch.device,
               logit_shift: torch.Tensor | None = None,
               class_weight: torch.Tensor | None = None) -> torch.Tensor:
    """The training loss of a batch: cross-entropy of the class logits (minus
    ``logit_shift`` when given; the ``class_weight``-weighted mean when given), or for a
    causal LM's token batch (``labels``) the mean cross-entropy of its response tokens.

    Instruction tuning runs in this loop rather than trl's SFTTrainer: a trainer built
    per Flower round re-creates its accelerator, optimizer and data pipeline every round,
    and the proximal terms (FedProx, FedRef, FedMerge) would need a Trainer subclass;
    the masked labels come from ``pollen.instruct.tokenise``."""
    if "labels" in batch:
        return instruct.response_loss(model, batch, device)[0].float()
    logits = logits_of(model, batch, device).float()
    if logit_shift is not None:
        logits = logits - logit_shift.to(device)
    return nn.functional.cross_entropy(
        logits, batch["label"].to(device),
        weight=None if class_weight is None else class_weight.to(device))


def macro_f1(truth: torch.Tensor, predicted: torch.Tensor) -> float:
    """Mean over the classes present in either of F1_c = 2 TP_c / (2 TP_c + FP_c + FN_c)
    (sklearn's ``f1_score(average="macro")``; here so that a client that evaluates a
    classifier imports no sklearn). Under label skew it tells a majority-class predictor
    (one class at F1 > 0, the others 0) from a real one at the same accuracy."""
    classes = torch.unique(torch.cat([truth, predicted]))
    scores = []
    for c in classes:
        tp = ((predicted == c) & (truth == c)).sum()
        wrong = ((predicted == c) != (truth == c)).sum()  # FP + FN
        scores.append(float(2 * tp / (2 * tp + wrong)))
    return sum(scores) / len(scores)


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, device: torch.device) -> EvalResult:
    model.to(device).eval()
    criterion = nn.CrossEntropyLoss(reduction="sum")
    total_loss, truth, predicted = 0.0, [], []
    for batch in loader:
        labels = batch["label"].to(device)
        with autocast(device):
            logits = logits_of(model, batch, device).float()
        total_loss += criterion(logits, labels).item()
        truth.append(labels.cpu())
        predicted.append(logits.argmax(dim=-1).cpu())
    if not truth:
        raise ValueError("cannot evaluate on an empty split")
    truth_all, predicted_all = torch.cat(truth), torch.cat(predicted)
    count = len(truth_all)
    return EvalResult(total_loss / count, float((truth_all == predicted_all).sum()) / count,
                      count, {"macro_f1": macro_f1(truth_all, predicted_all),
                              "predicted_class_max_share":
                                  predicted_class_max_share(predicted_all)})


Evaluate = Callable[[nn.Module, DataLoader, torch.device], EvalResult]


def evaluator_for(modality: str, model_name: str, response_labels: tuple[str, ...],
                  max_new_tokens: int) -> Evaluate:
    """How a model of ``model_name`` is evaluated: ``evaluate`` for classifiers; for
    instruct data, the response loss and perplexity, and with ``response_labels``
    (classification as generation) the exact match and macro-F1 of greedy answers."""
    if modality != "instruct":
        return evaluate
    tokenizer = _tokenizer(model_name)

    def evaluate_instruct(model: nn.Module, loader: DataLoader,
                          device: torch.device) -> EvalResult:
        result = instruct.evaluate(model, loader, device, tokenizer, response_labels or None,
                                   max_new_tokens)
        metrics = {"perplexity": result.perplexity}
        if result.macro_f1 is not None:
            metrics["macro_f1"] = result.macro_f1
            metrics["predicted_class_max_share"] = result.predicted_class_max_share
        return EvalResult(result.loss, result.accuracy, result.num_examples, metrics)

    return evaluate_instruct
