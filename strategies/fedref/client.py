"""FedRef's client half: the proximal term pulls towards the reference model that the
train message carries (ArrayRecord ``reference``), not towards the received model."""

from __future__ import annotations

import torch
from flwr.app import Message

from pollen.training import trainable_snapshot
from strategies.spec import ClientHalf, ClientJob

REFERENCE_KEY = "reference"  # ArrayRecord of a train message: the reference model


class FedRefClient(ClientHalf):
    def proximal_anchor(self, job: ClientJob, message: Message) -> list[torch.Tensor] | None:
        if REFERENCE_KEY not in message.content.array_records:
            return None
        return trainable_snapshot(job.model_from(message, key=REFERENCE_KEY))
