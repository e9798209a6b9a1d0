"""The client half of proximal methods: how strongly, and towards what, to stay close.

A strategy that wants a proximal term puts ``proximal-mu`` into the train config
(Flower's FedProx does; FedRef does too). The anchor is the model the client was sent,
unless the message also carries a ``reference`` ArrayRecord (FedRef's reference model, the
mean of recent global models), in which case the client stays close to that instead.
"""

from __future__ import annotations

import torch
from flwr.app import Message

from client_app.job import ClientJob
from pollen.records import REFERENCE_KEY
from pollen.training import trainable_snapshot


def proximal_mu(message: Message) -> float:
    return float(message.content["config"].get("proximal-mu", 0.0))


def proximal_anchor(job: ClientJob, message: Message) -> list[torch.Tensor] | None:
    """The reference's trainable tensors, or None (anchor = the received model)."""
    if REFERENCE_KEY not in message.content.array_records or proximal_mu(message) <= 0:
        return None
    return trainable_snapshot(job.model_from(message, key=REFERENCE_KEY))
