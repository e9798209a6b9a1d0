"""Mosaic's per-client generators and the local discriminators they are trained against.

A generator maps noise z ~ N(0, I) (``NOISE_DIM`` = 100, as the official code's nz) to
inputs of its client's model: 8x8 digit images for the CNN (a small DCGAN: the official
code's 32x32 DCGAN scaled down to 8x8, sigmoid output for pixels in [0, 1]), and for
transformers a sequence of ``mosaic.sequence-length`` vectors in the model's word-embedding
space, fed as ``inputs_embeds`` (the model adds position and type embeddings itself).
The architecture is a pure function of the settings and the model's input signature,
so the server rebuilds a client's generator from its uploaded tensors.
"""

from __future__ import annotations

import torch
from torch import nn

from pollen.catalog import modality_of
from pollen.seeding import derive_seed

NOISE_DIM = 100
DIGIT_SIDE = 8
EMBEDDING_HIDDEN = 256
DISCRIMINATOR_HIDDEN = 64


class ImageGenerator(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.ConvTranspose2d(NOISE_DIM, 64, 4, 1, 0), nn.BatchNorm2d(64), nn.ReLU(),  # 4x4
            nn.ConvTranspose2d(64, 32, 4, 2, 1), nn.BatchNorm2d(32), nn.ReLU(),  # 8x8
            nn.Conv2d(32, 1, 1), nn.Sigmoid())

    def forward(self, noise: torch.Tensor) -> torch.Tensor:
        return self.net(noise.view(-1, NOISE_DIM, 1, 1)).flatten(1)  # (B, 64) pixels


class ImageDiscriminator(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, 32, 4, 2, 1), nn.LeakyReLU(0.2),  # 4x4
            nn.Conv2d(32, 64, 4, 2, 1), nn.BatchNorm2d(64), nn.LeakyReLU(0.2),  # 2x2
            nn.Conv2d(64, 1, 2))

    def forward(self, pixels: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(pixels.view(-1, 1, DIGIT_SIDE, DIGIT_SIDE)).flatten()  # logits


class EmbeddingGenerator(nn.Module):
    def __init__(self, length: int, width: int) -> None:
        super().__init__()
        self.length, self.width = length, width
        self.net = nn.Sequential(nn.Linear(NOISE_DIM, EMBEDDING_HIDDEN), nn.ReLU(),
                                 nn.Linear(EMBEDDING_HIDDEN, length * width))

    def forward(self, noise: torch.Tensor) -> torch.Tensor:
        return self.net(noise).view(-1, self.length, self.width)  # (B, L, d) inputs_embeds


class EmbeddingDiscriminator(nn.Module):
    """A per-token MLP, averaged over the unmasked tokens, then a linear logit."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.token = nn.Sequential(nn.Linear(width, DISCRIMINATOR_HIDDEN), nn.LeakyReLU(0.2))
        self.out = nn.Linear(DISCRIMINATOR_HIDDEN, 1)

    def forward(self, embeds: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        hidden = self.token(embeds)
        if mask is None:
            pooled = hidden.mean(dim=1)
        else:
            weights = mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
        return self.out(pooled).flatten()


def input_signature(model: nn.Module, model_name: str) -> tuple[str, int]:
    """(modality, width): which inputs the model takes. Generated inputs are scored only by
    models of the same signature (MiniLM-L2/L4/L6 share one: the same embedding space)."""
    if modality_of(model_name) == "image":
        return "image", DIGIT_SIDE * DIGIT_SIDE
    return "text", int(model.get_input_embeddings().embedding_dim)


def build_generator(seed: int, sequence_length: int, signature: tuple[str, int],
                    client_id: str) -> nn.Module:
    torch.manual_seed(derive_seed(seed, "mosaic-generator", client_id))
    modality, width = signature
    if modality == "image":
        return ImageGenerator()
    return EmbeddingGenerator(sequence_length, width)


def build_discriminator(seed: int, signature: tuple[str, int], client_id: str) -> nn.Module:
    torch.manual_seed(derive_seed(seed, "mosaic-discriminator", client_id))
    modality, width = signature
    return ImageDiscriminator() if modality == "image" else EmbeddingDiscriminator(width)


def model_inputs(samples: torch.Tensor, signature: tuple[str, int]) -> dict[str, torch.Tensor]:
    """Generated samples as keyword arguments of the model's forward."""
    if signature[0] == "image":
        return {"pixels": samples}
    mask = torch.ones(samples.shape[:2], dtype=torch.long, device=samples.device)
    return {"inputs_embeds": samples, "attention_mask": mask}


@torch.no_grad()
def sample(generator: nn.Module, count: int, seed: int, device: torch.device) -> torch.Tensor:
    """``count`` samples from a generator in eval mode (BatchNorm's running statistics),
    from seeded noise."""
    generator.to(device).eval()
    noise = torch.randn(count, NOISE_DIM, generator=torch.Generator().manual_seed(seed))
    return generator(noise.to(device))
