"""Guided model merging for hybrid data (Zhu et al., arXiv 2503.20138)."""

from pollen.errors import ConfigError
from pollen.training import torch_dataset
from strategies.guided.atlas import ModelAtlas
from strategies.guided.client import GuidedClient
from strategies.guided.coefficient_search import CoefficientSearch
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

    search = CoefficientSearch(
        setup.model, convert(data.search), convert(data.holdout),
        loss="ce" if data.labeled else settings.unlabeled_loss,
        granularity=settings.granularity, steps=settings.search_steps,
        lr=settings.search_lr, batch_size=settings.search_batch_size,
        device=next(setup.model.parameters()).device, trust_region=settings.trust_region)
    atlas = ModelAtlas(settings.atlas_size, settings.max_staleness, settings.eviction_patience)
    member = (setup.server_training(data.search)
              if settings.server_member and data.labeled else None)
    return GuidedMerge(search=search, atlas=atlas, server_member=member, **setup.common())


SPEC = MethodSpec("guided", config=GuidedConfig, build=build, client=GuidedClient(),
                  server_data=True)
