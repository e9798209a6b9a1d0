"""Local training and evaluation loops, shared by clients and the server."""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass

import datasets
import torch
from torch import nn
from torch.utils.data import DataLoader

from pollen.device import autocast

TEXT_FEATURES = ("input_ids", "attention_mask", "token_type_ids")


@dataclass(frozen=True)
class TrainResult:
    loss: float  # mean cross-entropy over all local steps (proximal term excluded)
    num_examples: int
    seconds: float


@dataclass(frozen=True)
class EvalResult:
    loss: float
    accuracy: float
    num_examples: int


@functools.lru_cache(maxsize=2)
def _tokenizer(model_name: str):
    from pollen.models import build_tokenizer

    return build_tokenizer(model_name)


def torch_dataset(split: datasets.Dataset, modality: str, model_name: str,
                  max_seq_len: int) -> datasets.Dataset:
    """The split in torch format: pixels or tokenised text, plus label."""
    if modality == "image":
        return split.with_format("torch", columns=["pixels", "label"])
    tokenizer = _tokenizer(model_name)
    tokenised = split.map(
        lambda batch: tokenizer(batch["text"], truncation=True, max_length=max_seq_len,
                                padding="max_length"),
        batched=True, remove_columns=["text"])
    columns = [c for c in TEXT_FEATURES if c in tokenised.column_names] + ["label"]
    return tokenised.with_format("torch", columns=columns)


def make_loader(split: datasets.Dataset, batch_size: int, shuffle: bool,
                seed: int) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(split, batch_size=batch_size, shuffle=shuffle, generator=generator)


def logits_of(model: nn.Module, batch: dict[str, torch.Tensor], device: torch.device,
              params: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """The model's logits on a batch; with ``params`` (module names -> tensors), through
    ``torch.func.functional_call`` with those tensors in place of the module's own."""
    features = {k: v.to(device) for k, v in batch.items() if k != "label"}
    if params is None:
        output = model(**features)
    else:
        output = torch.func.functional_call(model, params, args=(), kwargs=features)
    return output.logits if hasattr(output, "logits") else output


def trainable_snapshot(model: nn.Module) -> list[torch.Tensor]:
    """Detached copies of the trainable parameters, in ``model.parameters()`` order."""
    return [p.detach().clone() for p in model.parameters() if p.requires_grad]


def proximal_term(params: list[torch.Tensor], anchor: list[torch.Tensor],
                  mu: float) -> torch.Tensor:
    """(mu/2) * sum ||p - a||^2; its gradient with respect to p is mu * (p - a)."""
    return mu / 2 * sum((p - a).pow(2).sum() for p, a in zip(params, anchor, strict=True))


def train(model: nn.Module, loader: DataLoader, *, epochs: int, lr: float,
          device: torch.device, proximal_mu: float = 0.0,
          anchor: list[torch.Tensor] | None = None, seed: int = 0) -> TrainResult:
    """AdamW on the trainable parameters for ``epochs`` passes.

    With ``proximal_mu > 0`` the loss gains (mu/2) * ||w - a||^2 over the trainable
    parameters: a = ``anchor`` (a ``trainable_snapshot``) when given, else the values on
    entry (FedProx's proximal term).
    """
    torch.manual_seed(seed)
    model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    if proximal_mu <= 0:
        anchor = []
    elif anchor is None:
        anchor = trainable_snapshot(model)
    else:
        anchor = [a.to(device) for a in anchor]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    criterion = nn.CrossEntropyLoss()
    total_loss, steps, seen = 0.0, 0, 0
    start = time.perf_counter()
    for _ in range(epochs):
        for batch in loader:
            labels = batch["label"].to(device)
            with autocast(device):
                loss = criterion(logits_of(model, batch, device).float(), labels)
            objective = loss + proximal_term(params, anchor, proximal_mu) if anchor else loss
            optimizer.zero_grad(set_to_none=True)
            objective.backward()
            optimizer.step()
            total_loss += loss.item()
            steps += 1
            seen += len(labels)
    return TrainResult(total_loss / max(steps, 1), seen // epochs,
                       time.perf_counter() - start)


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, device: torch.device) -> EvalResult:
    model.to(device).eval()
    criterion = nn.CrossEntropyLoss(reduction="sum")
    total_loss, correct, count = 0.0, 0, 0
    for batch in loader:
        labels = batch["label"].to(device)
        with autocast(device):
            logits = logits_of(model, batch, device).float()
        total_loss += criterion(logits, labels).item()
        correct += (logits.argmax(dim=-1) == labels).sum().item()
        count += len(labels)
    if count == 0:
        raise ValueError("cannot evaluate on an empty split")
    return EvalResult(total_loss / count, correct / count, count)
