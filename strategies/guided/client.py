"""Guided merging's client half: the train reply echoes the message's ``global-round``,
the index of the global model the client started from, so that the server knows which
global its update is relative to."""

from __future__ import annotations

from flwr.app import ArrayRecord, Message
from torch import nn

from strategies.spec import ClientHalf, ClientJob

# Train config key -> reply metric: the index of the global model the client started
# from (0 = the initial model; round r sends global r-1).
GLOBAL_ROUND_KEY = "global-round"


class GuidedClient(ClientHalf):
    def after_training(self, job: ClientJob, message: Message, model: nn.Module,
                       seed: int) -> tuple[dict[str, ArrayRecord], dict[str, float]]:
        config = message.content["config"]
        if GLOBAL_ROUND_KEY not in config:
            return {}, {}
        return {}, {GLOBAL_ROUND_KEY: int(config[GLOBAL_ROUND_KEY])}
