"""HeteroTune's client half: the family gate's second validation loss.

An evaluate message that carries ``family-own`` (the family's model after its own step
alone, ``strategy.py``) is scored twice on the client's local test split, so the server
can compare the shared step with the family's own: the reply's ``eval_loss`` is the
model's, ``eval_own_loss`` the own candidate's.
"""

from __future__ import annotations

from collections.abc import Callable

from flwr.app import Message
from torch import nn

from pollen.training import EvalResult
from strategies.heterotune.strategy import OWN_KEY, OWN_LOSS
from strategies.spec import ClientHalf, ClientJob


class HeteroTuneClient(ClientHalf):
    def after_evaluation(self, job: ClientJob, message: Message,
                         evaluate: Callable[[nn.Module], EvalResult]) -> dict[str, float]:
        if OWN_KEY not in message.content:
            return {}
        return {OWN_LOSS: evaluate(job.model_from(message, OWN_KEY)).loss}
