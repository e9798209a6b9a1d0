"""Tensor encodings: error bounds, refusals, Flower records and a whole run per wire-dtype."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from client_app.app import app as client_app
from pollen import wire
from pollen.config import ConfigError
from pollen.records import from_array_record, to_array_record
from server_app.app import run
from strategies import run_config
from tests.localgrid import LocalGrid


def sample(seed=0, shape=(64, 33)):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=shape) * rng.choice([1e-3, 1.0, 300.0], size=shape)
            ).astype(np.float32)


def test_float32_is_exact():
    x = sample()
    data, scale = wire.encode(x, "float32")
    assert wire.decode(data, "float32", x.shape, scale).tobytes() == x.tobytes()


def test_float16_error_is_within_half_an_ulp():
    x = sample()
    data, _ = wire.encode(x, "float16")
    y = wire.decode(data, "float16", x.shape)
    assert len(data) == x.size * 2
    bound = np.maximum(np.abs(x) * 2.0 ** -11, 2.0 ** -25)
    assert np.all(np.abs(x - y) <= bound)


def test_bfloat16_error_is_within_half_an_ulp():
    x = sample()
    data, _ = wire.encode(x, "bfloat16")
    y = wire.decode(data, "bfloat16", x.shape)
    assert len(data) == x.size * 2
    assert np.all(np.abs(x - y) <= np.abs(x) * 2.0 ** -8)
    assert not np.array_equal(x, y)  # it really is 16 bits


def test_int8_error_is_within_half_a_step():
    x = sample()
    data, scale = wire.encode(x, "int8")
    y = wire.decode(data, "int8", x.shape, scale)
    assert len(data) == x.size and scale == pytest.approx(np.abs(x).max() / 127)
    assert np.all(np.abs(x - y) <= scale / 2 * (1 + 1e-6))
    zeros, zero_scale = wire.encode(np.zeros(5, np.float32), "int8")
    assert zero_scale == 0.0 and np.array_equal(wire.decode(zeros, "int8", (5,), 0.0),
                                                np.zeros(5, np.float32))


def test_what_cannot_be_encoded_or_decoded_is_refused_by_name():
    with pytest.raises(wire.WireError, match="'big' holds 70000, beyond float16's range"):
        wire.encode(np.array([7e4], np.float32), "float16", "big")
    with pytest.raises(wire.WireError, match="'bad' holds non-finite"):
        wire.encode(np.array([np.nan], np.float32), "int8", "bad")
    with pytest.raises(wire.WireError, match="unknown encoding 'int4'"):
        wire.encode(np.zeros(2, np.float32), "int4")
    data, _ = wire.encode(np.ones((4, 4), np.float32), "bfloat16")
    with pytest.raises(wire.WireError, match=r"'w' carries 31 bytes; shape \(4, 4\) in "
                                             r"bfloat16 needs 32 \(truncated"):
        wire.decode(data[:-1], "bfloat16", (4, 4), name="w")
    with pytest.raises(wire.WireError, match="int8 scale nan"):
        wire.decode(b"\x01", "int8", (1,), float("nan"))


@pytest.mark.parametrize("encoding", wire.ENCODINGS)
def test_flower_records_carry_each_encoding_and_decode_to_float32(encoding):
    state = {"a": sample(1, (8, 3)), "b": sample(2, (5,))}
    record = to_array_record(state, encoding)
    back = from_array_record(record)
    assert all(v.dtype == np.float32 and v.shape == state[k].shape for k, v in back.items())
    size = sum(len(a.data) for a in record.values())
    if encoding == "float32":
        assert all(np.array_equal(back[k], state[k]) for k in state)
    else:
        payload = {"float16": 2, "bfloat16": 2, "int8": 1}[encoding] * 29
        assert size == payload + (8 if encoding == "int8" else 0)  # two int8 scales


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=64), encoding=st.sampled_from(wire.ENCODINGS),
       shape=st.lists(st.integers(0, 5), max_size=3), scale=st.floats())
def test_the_decoder_never_fails_other_than_with_a_wire_error(data, encoding, shape, scale):
    try:
        value = wire.decode(data, encoding, tuple(shape), scale)
    except wire.WireError:
        return
    assert value.dtype == np.float32 and value.shape == tuple(shape)


def test_an_unknown_wire_dtype_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown wire-dtype 'fp8'"):
        run_config({"wire-dtype": "fp8"})


@pytest.mark.parametrize("encoding, ratio", [("float16", 0.5), ("int8", 0.25)])
def test_a_run_in_a_compact_wire_dtype_sends_fewer_bytes_and_still_learns(tmp_path, encoding,
                                                                          ratio):
    from server_app.checkpoints import latest_checkpoint

    rows = {}
    for dtype in ("float32", encoding):
        config = run_config({"num-server-rounds": 2, "wire-dtype": dtype,
                                         "output-dir": str(tmp_path), "run-name": dtype})
        outputs = run(LocalGrid.simulation(client_app, num_nodes=4), config)
        rows[dtype] = outputs.read_metrics()
    state = latest_checkpoint(outputs.run_dir).strategy_state["tensors"]  # the server's own
    assert {np.asarray(value).dtype for value in state.values()} == {np.dtype(np.float32)}
    for key in ("bytes_up", "bytes_down"):
        measured = rows[encoding][0][key] / rows["float32"][0][key]
        assert ratio * 0.97 < measured < ratio * 1.03, (key, measured)  # npy headers aside
    assert rows[encoding][-1]["eval_accuracy"] > 0.3  # chance is 0.1
    assert abs(rows[encoding][-1]["eval_accuracy"] - rows["float32"][-1]["eval_accuracy"]) < 0.1
