"""Mosaic's client half: prototypes, and once, a generator.

Prototypes (the generator round's reply; with ``mosaic.prototype-rounds = all`` also every
warm-up round's): per-class k-means centres of the penultimate features of
the global model the client received, on its local train split (the official code
computes them from the received model too, before local training); a class with fewer
than k examples contributes its mean. With them travel the client's class counts n_kc,
which weight the server's class-specific experts.

Generator (the train round whose config says ``mosaic-stage = generator``): after local
training, a generator G is trained against the frozen local model f and a small local
discriminator D on the client's real train inputs (DeGAN, as the official code's
``degan.py``), with Adam (lr ``mosaic.generator-lr``, betas 0.5/0.999) for
``mosaic.generator-steps`` steps of one local batch each:

    L_D = BCE(D(x), 1) + BCE(D(G(z)), 0)
    L_G = w_adv BCE(D(G(z)), 1) + w_ent mean_b H(f(G(z))_b) + w_div sum_c pbar_c log pbar_c

with pbar the batch-mean prediction (so the diversity term maximises its entropy). The
weights default to the official w_adv = 1, w_ent = 0, w_div = 5; the learning rate to
1e-3 rather than the official 2e-4, which trains for 25+ epochs of 256-image batches: a
client here holds ~100 digits, and 200 steps at 2e-4 left the samples noise while
200-600 steps at 1e-3 gave recognisable digits (one digits client, compared by eye in
the PNG grid a run writes). For transformers the real inputs
are the word embeddings of the first ``mosaic.sequence-length`` tokens (with their
attention mask), and G emits sequences of that length. A generator whose weights or
samples are not finite is not uploaded; the reply says so. A client with fewer than
``mosaic.min-generator-examples`` train examples trains no generator (it still trains,
and sends its prototypes and class counts); the reply says how many it holds.
"""

from __future__ import annotations

import contextlib
import itertools
import time

import numpy as np
import torch
import torch.nn.functional as F
from flwr.app import ArrayRecord, Message
from torch import nn

from pollen.records import to_array_record
from pollen.training import logits_of, make_loader
from strategies.mosaic.config import MosaicConfig
from strategies.mosaic.generator import (
    NOISE_DIM,
    build_discriminator,
    build_generator,
    input_signature,
    model_inputs,
    sample,
)
from strategies.mosaic.heads import penultimate_features
from strategies.spec import ClientHalf, ClientJob

# The stage a train message's config names (``STAGE_KEY``); clients send prototypes in
# the first two (in warm-up only with ``prototype-rounds = all``) and train their
# generator in the second.
WARMUP, GENERATOR, FEDAVG = "warmup", "generator", "fedavg"
STAGE_KEY = "mosaic-stage"
# The reply's extra ArrayRecords.
PROTOTYPES_KEY = "mosaic-prototypes"
GENERATOR_KEY = "mosaic-generator"
# The reply's metric when the client holds fewer than ``mosaic.min-generator-examples``
# train examples: how many it holds (it sends no generator; a GAN's discriminator on a
# handful of examples learns nothing a teacher could use).
GENERATOR_TOO_FEW_KEY = "generator_too_few_examples"


class MosaicClient(ClientHalf):
    def before_training(self, job: ClientJob, message: Message, model: nn.Module,
                        seed: int) -> dict[str, ArrayRecord]:
        """The prototypes of the model as received."""
        stage = message.content["config"].get(STAGE_KEY)
        settings: MosaicConfig = job.config.method
        if stage == GENERATOR or (stage == WARMUP and settings.prototype_rounds == "all"):
            return {PROTOTYPES_KEY: prototype_record(job, model, seed, job.config.wire_dtype)}
        return {}

    def after_training(self, job: ClientJob, message: Message, model: nn.Module,
                       seed: int) -> tuple[dict[str, ArrayRecord], dict[str, float]]:
        """In the generator round, the generator trained against the local model."""
        if message.content["config"].get(STAGE_KEY) != GENERATOR:
            return {}, {}
        held = len(job.data.train)
        if held < job.config.method.min_generator_examples:
            return {}, {GENERATOR_TOO_FEW_KEY: float(held)}
        weights, metrics = train_generator(job, model, seed)
        records = ({} if weights is None
                   else {GENERATOR_KEY: to_array_record(weights, job.config.wire_dtype)})
        return records, metrics


def adversarial_loss(fake_scores: torch.Tensor) -> torch.Tensor:
    """The generator's non-saturating GAN loss: BCE(D(G(z)), 1) on D's logits."""
    return F.binary_cross_entropy_with_logits(fake_scores, torch.ones_like(fake_scores))


def discriminator_loss(real_scores: torch.Tensor, fake_scores: torch.Tensor) -> torch.Tensor:
    return (F.binary_cross_entropy_with_logits(real_scores, torch.ones_like(real_scores))
            + F.binary_cross_entropy_with_logits(fake_scores, torch.zeros_like(fake_scores)))


def entropy_loss(logits: torch.Tensor) -> torch.Tensor:
    """mean_b H(softmax(logits_b)): low when every prediction is confident."""
    log_p = F.log_softmax(logits, dim=-1)
    return -(log_p.exp() * log_p).sum(dim=-1).mean()


def diversity_loss(logits: torch.Tensor) -> torch.Tensor:
    """sum_c pbar_c log pbar_c = -H(pbar): low when the batch covers the classes evenly."""
    mean_p = F.softmax(logits, dim=-1).mean(dim=0)
    return (mean_p * torch.log(mean_p.clamp_min(1e-12))).sum()


def class_prototypes(features: np.ndarray, labels: np.ndarray, k: int, seed: int
                     ) -> tuple[np.ndarray, np.ndarray]:
    """(centres, their classes): k-means with k centres per class (sklearn), or the class
    mean for a class with fewer than k examples."""
    from sklearn.cluster import KMeans  # imported here: only Mosaic's clients need sklearn

    centres, classes = [], []
    for label in np.unique(labels):
        members = features[labels == label]
        if len(members) < k:
            found = members.mean(axis=0, keepdims=True)
        else:
            found = KMeans(n_clusters=k, random_state=seed, n_init=1).fit(members).cluster_centers_
        centres.append(found.astype(np.float32))
        classes += [int(label)] * len(found)
    return np.concatenate(centres), np.asarray(classes, dtype=np.float32)


def prototype_record(job: ClientJob, model: nn.Module, seed: int, encoding: str) -> ArrayRecord:
    """This client's prototypes (``features``, ``labels``) and ``class-counts``."""
    loader = make_loader(job.data.train, job.config.batch_size, shuffle=False, seed=0)
    features, labels = penultimate_features(model, loader, job.device)
    centres, classes = class_prototypes(features.numpy(), labels.numpy(),
                                        job.config.method.prototypes, seed)
    counts = np.bincount(labels.numpy(), minlength=job.data.num_classes).astype(np.float32)
    return to_array_record({"features": centres, "labels": classes, "class-counts": counts},
                           encoding)


@contextlib.contextmanager
def frozen(model: nn.Module):
    """The model in eval mode with no parameter requiring gradients (restored after)."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    was_training = model.training
    model.eval()
    for p in trainable:
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for p in trainable:
            p.requires_grad_(True)
        model.train(was_training)


def _real_inputs(model: nn.Module, batch: dict, signature: tuple[str, int], length: int,
                 device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    if signature[0] == "image":
        return batch["pixels"].to(device), None
    ids = batch["input_ids"][:, :length].to(device)
    with torch.no_grad():
        return (model.get_input_embeddings()(ids),
                batch["attention_mask"][:, :length].to(device))


def generator_weights(generator: nn.Module) -> dict[str, np.ndarray]:
    """The generator's floating-point state (parameters and BatchNorm's running
    statistics); the integer batch counters do not travel."""
    return {name: t.detach().cpu().float().numpy().copy()
            for name, t in generator.state_dict().items() if t.is_floating_point()}


def train_generator(job: ClientJob, model: nn.Module, seed: int
                    ) -> tuple[dict[str, np.ndarray] | None, dict]:
    """(generator weights or None if they are not finite, metrics)."""
    started = time.perf_counter()
    config, settings, device = job.config, job.config.method, job.device
    signature = input_signature(model, job.family)
    generator = build_generator(config.seed, settings.sequence_length, signature,
                                job.client_id).to(device).train()
    discriminator = build_discriminator(config.seed, signature, job.client_id).to(device).train()
    betas = (0.5, 0.999)
    g_optimizer = torch.optim.Adam(generator.parameters(), lr=settings.generator_lr,
                                   betas=betas)
    d_optimizer = torch.optim.Adam(discriminator.parameters(), lr=settings.generator_lr,
                                   betas=betas)
    noise_rng = torch.Generator().manual_seed(seed)
    loader = make_loader(job.data.train, config.batch_size, shuffle=True, seed=seed)
    batches = itertools.islice(itertools.cycle(loader), settings.generator_steps)
    totals = {"adversarial": 0.0, "entropy": 0.0, "diversity": 0.0, "discriminator": 0.0}
    with frozen(model):
        for batch in batches:
            real, mask = _real_inputs(model, batch, signature, settings.sequence_length,
                                      device)
            noise = torch.randn(len(real), NOISE_DIM, generator=noise_rng).to(device)
            fake = generator(noise)
            d_loss = discriminator_loss(discriminator(real, mask),
                                        discriminator(fake.detach()))
            d_optimizer.zero_grad(set_to_none=True)
            d_loss.backward()
            d_optimizer.step()
            logits = logits_of(model, model_inputs(fake, signature), device).float()
            terms = {"adversarial": adversarial_loss(discriminator(fake)),
                     "entropy": entropy_loss(logits), "diversity": diversity_loss(logits)}
            g_loss = (settings.adversarial_weight * terms["adversarial"]
                      + settings.entropy_weight * terms["entropy"]
                      + settings.diversity_weight * terms["diversity"])
            g_optimizer.zero_grad(set_to_none=True)
            g_loss.backward()
            g_optimizer.step()
            totals["discriminator"] += d_loss.item()
            for name, value in terms.items():
                totals[name] += value.item()
    metrics = {f"generator_{name}_loss": value / settings.generator_steps
               for name, value in totals.items()}
    weights = generator_weights(generator)
    samples = sample(generator, config.batch_size, seed, device)
    finite = all(np.isfinite(w).all() for w in weights.values()) and bool(
        torch.isfinite(samples).all())
    metrics["generator_finite"] = float(finite)
    metrics["generator_seconds"] = time.perf_counter() - started
    if not finite:
        return None, metrics
    return weights, metrics
