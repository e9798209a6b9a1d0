"""Guided model merging for hybrid data (Zhu et al., arXiv 2503.20138)."""

from pollen.errors import ConfigError
from pollen.training import torch_dataset
from strategies.guided.client import GuidedClient
from strategies.guided.config import GuidedConfig
from strategies.guided.strategy import GuidedMerge
from strategies.spec import MethodSpec, ServerSetup


def build(setup: ServerSetup) -> GuidedMerge:
    c, settings, data = setup.config, setup.config.method, setup.server_data

    if setup.modality == "instruct" and not data.labeled:
        raise ConfigError("guided on task 'instruct' searches by the response loss, which "
                          "needs the server's responses: set server-data-labeled = true")

    def convert(split):
        return torch_dataset(split, setup.modality, c.model, c.max_seq_len)

    member = (setup.server_training(data.search)
              if settings.server_member and data.labeled else None)
    return GuidedMerge(
        model=setup.model, search_data=convert(data.search),
        holdout_data=convert(data.holdout), labeled=data.labeled,
        unlabeled_loss=settings.unlabeled_loss, atlas_size=settings.atlas_size,
        max_staleness=settings.max_staleness, eviction_patience=settings.eviction_patience,
        granularity=settings.granularity, search_steps=settings.search_steps,
        search_lr=settings.search_lr, search_batch_size=settings.search_batch_size,
        trust_region=settings.trust_region, server_member=member, **setup.common())

SPEC = MethodSpec("guided", config=GuidedConfig, build=build, client=GuidedClient(),
                  server_data=True)
