"""The client side of FedProx, FedRef and FedMerge for a Flower user's own ClientApp.

Those strategies ask for a proximal term in the train message: the config's
``proximal-mu`` (FedMerge sends 2 mu, so that the term is its mu ||theta - theta_i0||^2)
and, from FedRef, an ArrayRecord ``reference`` to pull towards instead of the received
model. Pollen's client app adds the term itself; Flower's FedProx leaves it to the
user's training loop, and its examples write it out by hand. ``ProximalTerm`` is that
code once for the three, so a user's loop changes by one line::

    pull = ProximalTerm.from_message(msg)
    ...
    loss = criterion(net(images), labels) + pull(net)

A message without ``proximal-mu`` (FedAvg, Central, GuidedMerge, FedRef's warm-up
rounds) gives a term of 0.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from flwr.app import Message
from torch import nn

from pollen.training import proximal_term
from strategies.fedref.client import REFERENCE_KEY

PROXIMAL_MU_KEY = "proximal-mu"


class ProximalTerm:
    """(mu/2) sum_p ||p - a_p||^2 over the model's trainable parameters, a_p the anchor's
    tensor of the same name (a state-dict name, as ``ArrayRecord(model.state_dict())``
    names it)."""

    def __init__(self, mu: float, anchor: Mapping[str, torch.Tensor]) -> None:
        if mu < 0:
            raise ValueError(f"proximal-mu must be >= 0, got {mu}")
        self.mu, self.anchor = float(mu), dict(anchor)

    @classmethod
    def from_message(cls, message: Message, arrayrecord_key: str = "arrays",
                     configrecord_key: str = "config") -> ProximalTerm:
        """The term a train message asks for: ``proximal-mu`` from its ConfigRecord
        (``configrecord_key``, as the strategy was built), anchored at its ``reference``
        ArrayRecord when it has one, else at the arrays it sent (``arrayrecord_key``)."""
        config = message.content.config_records.get(configrecord_key, {})
        mu = float(config.get(PROXIMAL_MU_KEY, 0.0))
        if mu == 0:
            return cls(0.0, {})
        arrays = message.content.array_records
        key = REFERENCE_KEY if REFERENCE_KEY in arrays else arrayrecord_key
        if key not in arrays:
            raise ValueError(f"the train message asks for {PROXIMAL_MU_KEY}={mu} but has no "
                             f"ArrayRecord '{arrayrecord_key}' to anchor it")
        return cls(mu, arrays[key].to_torch_state_dict())

    def __call__(self, model: nn.Module) -> torch.Tensor:
        """The term for ``model``'s current parameters (differentiable); 0 with mu = 0."""
        params = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
        if self.mu == 0 or not params:
            return torch.zeros((), device=params[0][1].device if params else None)
        missing = [name for name, _ in params if name not in self.anchor]
        if missing:
            raise ValueError(f"the message's anchor has no tensor for the model's "
                             f"parameters {missing[:3]}: build the model the arrays came "
                             "from (the same state-dict names)")
        device = params[0][1].device
        return proximal_term([p for _, p in params],
                             [self.anchor[name].to(device) for name, _ in params], self.mu)
