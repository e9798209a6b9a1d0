"""Mosaic's server side, after the generator round: class-specific experts, the meta
model that mixes them, and the distillation of the global model from that teacher.

Experts (per family f and class c, over the round's clients k of that family):

    theta_{f,c} = sum_k n_kc theta_k / sum_k n_kc

(a class no client of the family holds has no expert). Experts are the travelling
tensors only; every client shares the frozen backbone, so ``torch.func.functional_call``
runs an expert on the family's one model object.

Meta model: the official code's ``CustomAttentionEnsemble_For_CIFAR10`` read for any C
classes: each expert's logits (C) expanded to C^2 by a linear layer, a ``nn.Transformer``
(d_model C^2, C heads, one encoder and one decoder layer, dropout 0.2) over the sequence
of experts called as transformer(x, x), summed over experts, a linear layer to C. It is
trained with cross-entropy on the prototypes, each prototype scored by its family's
experts' heads only (the official code runs ``.linear`` on 2-D inputs); Adam, lr 1e-3,
batches of 128, with an exponential moving average (decay 0.99) as the teacher, as
there. Ours differs in one respect: families whose inputs or features an expert cannot
take are masked out of the transformer and of the sum (the official code has one
architecture, so it never needs a mask).

Distillation: the global model s of the student family learns from t = meta(experts(x))
on generated x (``mosaic.samples-per-generator`` samples from each generator whose inputs
the student takes), Adam with ``mosaic.distill-lr``, in eval mode as in the official code:

    L = 0.8 T^2 KL(softmax(t/T) || softmax(s/T)) + 0.2 CE(s, argmax t) + JSD

with the official code's JSD: m = (s/T + t/T)/2 averages the logits, and
JSD = (KL(softmax(m) || softmax(s/T)) + KL(softmax(m) || softmax(t/T)))/2; this differs
from the textbook JSD (mixture of the two distributions, KL of each to it).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from pollen.adapters import load_travelling_state, travelling_module_names, travelling_state
from pollen.seeding import derive_seed
from pollen.training import logits_of
from strategies.aggregate import weighted_mean
from strategies.fedavg_per_family.strategy import ACCUMULATE, Tensors
from strategies.mosaic.generator import model_inputs, sample
from strategies.mosaic.heads import HeadParams

META_LR, META_BATCH, META_EMA_DECAY, META_DROPOUT = 1e-3, 128, 0.99, 0.2
KL_WEIGHT, CE_WEIGHT = 0.8, 0.2


def class_experts(models: list[Tensors], class_counts: list[np.ndarray]) -> dict[int, Tensors]:
    """theta_c = sum_k n_kc theta_k / sum_k n_kc for every class some model was trained on."""
    counts = np.stack(class_counts)
    return {c: weighted_mean(models, list(counts[:, c]), ACCUMULATE)
            for c in range(counts.shape[1]) if counts[:, c].sum() > 0}


class MetaModel(nn.Module):
    def __init__(self, num_classes: int) -> None:
        super().__init__()
        width = num_classes * num_classes
        self.expand = nn.Linear(num_classes, width)
        self.transformer = nn.Transformer(d_model=width, nhead=num_classes,
                                          num_encoder_layers=1, num_decoder_layers=1,
                                          dropout=META_DROPOUT, batch_first=True)
        self.out = nn.Linear(width, num_classes)

    def forward(self, expert_logits: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """expert_logits (B, E, C); present (B, E) bool, False for a masked-out expert."""
        hidden = self.expand(expert_logits)
        absent = ~present
        mixed = self.transformer(hidden, hidden, src_key_padding_mask=absent,
                                 tgt_key_padding_mask=absent, memory_key_padding_mask=absent)
        return self.out((mixed * present.unsqueeze(-1)).sum(dim=1))


class Teacher:
    """The experts of every family, in a fixed order, and the meta model over them.

    ``models`` are the families' model objects (frozen backbone + travelling tensors),
    ``signatures`` their input signatures (``generator.input_signature``),
    ``experts`` the class-specific experts per family.
    """

    def __init__(self, models: dict[str, nn.Module], signatures: dict[str, tuple],
                 experts: dict[str, dict[int, Tensors]], num_classes: int,
                 device: torch.device) -> None:
        self.models, self.signatures, self.device = models, signatures, device
        self.num_classes = num_classes
        self.order = [(family, c) for family in sorted(experts) for c in sorted(experts[family])]
        # Each expert's tensors on the device once, under their travelling names (the
        # heads read those) and, sharing storage, under the model's own names (for
        # functional_call).
        self.expert_tensors = {(family, c): {n: torch.as_tensor(v, device=device)
                                             for n, v in experts[family][c].items()}
                               for family, c in self.order}
        names = {family: travelling_module_names(models[family]) for family in experts}
        self.params = {(family, c): {names[family][n]: t for n, t in tensors.items()}
                       for (family, c), tensors in self.expert_tensors.items()}
        self.heads = {family: HeadParams(models[family]) for family in experts}
        self.meta = MetaModel(num_classes).to(device)
        self.ema: AveragedModel | None = None

    @torch.no_grad()
    def prototype_logits(self, features: torch.Tensor, family: str
                         ) -> tuple[torch.Tensor, torch.Tensor]:
        """Each expert's head on a family's prototypes: (P, E, C) and the mask (P, E)."""
        logits = torch.zeros(len(features), len(self.order), self.num_classes,
                             device=self.device)
        present = torch.zeros(len(features), len(self.order), dtype=torch.bool,
                              device=self.device)
        features = features.to(self.device)
        for index, (expert_family, c) in enumerate(self.order):
            if expert_family == family:
                logits[:, index] = self.heads[family].logits(
                    features, self.expert_tensors[family, c]).float()
                present[:, index] = True
        return logits, present

    @torch.no_grad()
    def expert_logits(self, inputs: dict[str, torch.Tensor], signature: tuple
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """Every expert that takes ``signature`` inputs, on a batch of model inputs
        (generated or real)."""
        count = len(next(iter(inputs.values())))
        logits = torch.zeros(count, len(self.order), self.num_classes, device=self.device)
        present = torch.zeros(count, len(self.order), dtype=torch.bool, device=self.device)
        for index, (family, c) in enumerate(self.order):
            if self.signatures[family] == signature:
                model = self.models[family].eval()
                logits[:, index] = logits_of(model, inputs, self.device,
                                             params=self.params[family, c]).float()
                present[:, index] = True
        return logits, present

    def train_meta(self, prototypes: list[tuple[str, np.ndarray, np.ndarray]], steps: int,
                   seed: int) -> float:
        """Cross-entropy on the prototypes ((family, features, labels) triples); the EMA
        copy becomes the teacher. Returns its accuracy on the prototypes."""
        parts = [(*self.prototype_logits(torch.as_tensor(f), family),
                  torch.as_tensor(y, dtype=torch.long, device=self.device))
                 for family, f, y in prototypes]
        logits, present, labels = (torch.cat(p) for p in zip(*parts))
        torch.manual_seed(seed)
        order = torch.Generator().manual_seed(seed)
        self.meta.train()
        self.ema = AveragedModel(self.meta, multi_avg_fn=get_ema_multi_avg_fn(META_EMA_DECAY))
        optimizer = torch.optim.Adam(self.meta.parameters(), lr=META_LR)
        for _ in range(steps):
            batch = torch.randperm(len(labels), generator=order)[:META_BATCH].to(self.device)
            loss = F.cross_entropy(self.meta(logits[batch], present[batch]), labels[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            self.ema.update_parameters(self.meta)
        self.ema.eval()
        with torch.no_grad():
            predicted = self.ema(logits, present).argmax(dim=-1)
        return float((predicted == labels).float().mean())

    @torch.no_grad()
    def prototype_accuracy(self, family: str, features: np.ndarray, labels: np.ndarray) -> float:
        """The trained teacher's accuracy on prototypes of ``family`` (e.g. held out of
        ``train_meta``)."""
        if self.ema is None:
            raise RuntimeError("the meta model has not been trained")
        predicted = self.ema(*self.prototype_logits(torch.as_tensor(features), family))
        return float((predicted.argmax(dim=-1).cpu() == torch.as_tensor(labels)).float().mean())

    def load_meta(self, state: dict[str, np.ndarray]) -> None:
        """The teacher's meta model from a ``state_dict`` of a trained one (resume)."""
        self.meta.load_state_dict({k: torch.as_tensor(v) for k, v in state.items()})
        self.ema = AveragedModel(self.meta, multi_avg_fn=get_ema_multi_avg_fn(META_EMA_DECAY))
        self.ema.eval()

    @torch.no_grad()
    def __call__(self, samples: torch.Tensor, signature: tuple) -> torch.Tensor:
        """The teacher's logits on generated samples."""
        return self.logits(model_inputs(samples, signature), signature)

    @torch.no_grad()
    def logits(self, inputs: dict[str, torch.Tensor], signature: tuple) -> torch.Tensor:
        if self.ema is None:
            raise RuntimeError("the meta model has not been trained")
        return self.ema(*self.expert_logits(inputs, signature))

    @torch.no_grad()
    def accuracy(self, loader, signature: tuple) -> float:
        """The teacher's accuracy on real labelled batches (the server's test split)."""
        correct = count = 0
        for batch in loader:
            inputs = {k: v.to(self.device) for k, v in batch.items() if k != "label"}
            predicted = self.logits(inputs, signature).argmax(dim=-1).cpu()
            correct += int((predicted == batch["label"]).sum())
            count += len(batch["label"])
        return correct / count


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor,
                      temperature: float) -> torch.Tensor:
    """0.8 T^2 KL(t/T || s/T) + 0.2 CE(s, argmax t) + JSD (the official code's)."""
    s, t = student / temperature, teacher / temperature
    kl = F.kl_div(F.log_softmax(s, -1), F.softmax(t, -1), reduction="batchmean")
    mean_logits = F.softmax((s + t) / 2, -1)
    jsd = (F.kl_div(F.log_softmax(s, -1), mean_logits, reduction="batchmean")
           + F.kl_div(F.log_softmax(t, -1), mean_logits, reduction="batchmean")) / 2
    return (KL_WEIGHT * temperature ** 2 * kl
            + CE_WEIGHT * F.cross_entropy(student, teacher.argmax(dim=-1)) + jsd)


def kl_to_teacher(student: torch.Tensor, teacher: torch.Tensor) -> float:
    """KL(softmax(t) || softmax(s)), mean over the batch."""
    return float(F.kl_div(F.log_softmax(student, -1), F.softmax(teacher, -1),
                          reduction="batchmean"))


@dataclass(frozen=True)
class Distillation:
    tensors: Tensors  # the student's travelling tensors after distillation
    loss_first: float
    loss_last: float
    kl_before: float  # on a fixed generated batch, not used for training
    kl_after: float
    seconds: float


def distill(teacher: Teacher, model: nn.Module, start: Tensors, signature: tuple,
            generators: dict[str, nn.Module], *, steps: int, lr: float,
            samples_per_generator: int, temperature: float, seed: int) -> Distillation:
    """Train ``model``'s travelling tensors from ``start`` on samples of ``generators``
    (client id -> generator taking ``signature`` inputs) against the teacher."""
    started = time.perf_counter()
    device = teacher.device
    load_travelling_state(model, start, what="mosaic student")
    model.to(device).eval()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=lr)

    def generated(purpose: str, step: int) -> torch.Tensor:
        return torch.cat([sample(g, samples_per_generator,
                                 derive_seed(seed, purpose, step, client), device)
                          for client, g in sorted(generators.items())])

    probe = generated("probe", 0)
    probe_teacher = teacher(probe, signature)

    def probe_kl() -> float:
        with torch.no_grad():
            return kl_to_teacher(logits_of(model, model_inputs(probe, signature), device)
                                 .float(), probe_teacher)

    kl_before = probe_kl()
    losses = []
    for step in range(steps):
        samples = generated("distill", step)
        target = teacher(samples, signature)
        student = logits_of(model, model_inputs(samples, signature), device).float()
        loss = distillation_loss(student, target, temperature)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return Distillation(travelling_state(model), losses[0], losses[-1], kl_before, probe_kl(),
                        time.perf_counter() - started)
