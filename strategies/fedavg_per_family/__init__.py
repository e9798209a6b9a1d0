"""Per-family FedAvg: clients of several backbones, each family averaged on its own."""

from strategies.fedavg_per_family.strategy import FamilyFedAvg
from strategies.spec import MethodSpec


def family_common(setup) -> dict:
    """``setup.common()`` for strategies that keep one model per family."""
    common = setup.common()
    common.pop("initial_arrays")
    return dict(initial_models=setup.initial_models, **common)


SPEC = MethodSpec("fedavg-per-family", families=True,
                  build=lambda setup: FamilyFedAvg(**family_common(setup)))
