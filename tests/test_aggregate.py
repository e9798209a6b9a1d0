"""The server's hot path: the weighted mean and the zero-copy reply views."""

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

from pollen.records import array_views, from_array_record, to_array_record
from strategies.aggregate import CHUNK, weighted_mean, weighted_sum


def replies(count: int, shapes: dict, seed: int = 0) -> list[RecordDict]:
    rng = np.random.default_rng(seed)
    return [RecordDict({"arrays": to_array_record({n: rng.normal(size=s).astype(np.float32)
                                                   for n, s in shapes.items()}),
                        "metrics": MetricRecord({"num-examples": int(rng.integers(1, 200))})})
            for _ in range(count)]


@pytest.mark.parametrize("shapes", [{"a": (8, 384), "b": (4,)}, {"big": (3, CHUNK + 17)}])
def test_fedavg_s_mean_is_bit_for_bit_flower_s(shapes):
    records = replies(7, shapes)
    flower = aggregate_arrayrecords(records, "num-examples")
    ours = weighted_mean([array_views(r["arrays"]) for r in records],
                         [r["metrics"]["num-examples"] for r in records])
    for name, array in flower.items():
        assert ours[name].dtype == np.float32
        assert np.array_equal(ours[name], array.numpy()), name


def test_float64_accumulation_is_the_plain_float64_sum():
    rng = np.random.default_rng(1)
    models = [{"x": rng.normal(size=(5, CHUNK + 3)).astype(np.float32)} for _ in range(4)]
    weights = [0.1, 0.2, 0.3, 0.4]
    expected = sum(w * m["x"].astype(np.float64) for w, m in zip(weights, models))
    assert np.array_equal(weighted_sum(models, weights, np.float64)["x"],
                          expected.astype(np.float32))


def test_views_read_the_message_bytes_in_place_and_decode_anything_else():
    tensors = {"w": np.arange(12, dtype=np.float32).reshape(3, 4), "s": np.float32([2.5])}
    record = to_array_record(tensors)
    views = array_views(record)
    assert all(np.array_equal(views[k], v) for k, v in tensors.items())
    assert not views["w"].flags.owndata and not views["w"].flags.writeable
    assert array_views(record)["w"] is views["w"]  # read once per record
    fortran = ArrayRecord({"w": Array(np.asfortranarray(tensors["w"]))})
    assert np.array_equal(array_views(fortran)["w"], tensors["w"])
    int8 = to_array_record(tensors, "int8")
    assert np.allclose(array_views(int8)["w"], from_array_record(int8)["w"])
    assert Array(tensors["w"]).data == to_array_record(tensors)["w"].data  # Flower's bytes
