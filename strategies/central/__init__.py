"""The server-only baseline of guided merging's paper: the server trains on its own data."""

import datasets

from strategies.central.strategy import Central
from strategies.spec import MethodSpec, ServerSetup


def build(setup: ServerSetup) -> Central:
    data = setup.server_data
    everything = datasets.concatenate_datasets([data.search, data.holdout])
    return Central(training=setup.server_training(everything), **setup.common())


SPEC = MethodSpec("central", build=build, server_data=True, server_labels=True)
