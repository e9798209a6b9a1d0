"""The server-only baseline of guided merging's paper: the server trains on its own data."""

import datasets

from pollen.training import torch_dataset
from strategies.central.strategy import Central
from strategies.spec import MethodSpec, ServerSetup


def build(setup: ServerSetup) -> Central:
    c, data = setup.config, setup.server_data
    everything = datasets.concatenate_datasets([data.search, data.holdout])
    return Central(model=setup.model,
                   server_set=torch_dataset(everything, setup.modality, c.model, c.max_seq_len),
                   epochs=c.local_epochs, max_steps=c.max_steps, round_lr=c.round_lr,
                   batch_size=c.batch_size, optimizer=c.local_optimizer, **setup.common())


SPEC = MethodSpec("central", build=build, server_data=True, server_labels=True)
