"""Hypothesis feeds the run-config parser and the reply validator random input: every
input is accepted or rejected with the project's own error, never anything else."""

import numpy as np
from flwr.app import Message, MessageType, MetricRecord, RecordDict
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from pollen.config import ConfigError, RunConfig
from pollen.records import to_array_record
from strategies import run_config
from strategies.validation import RejectedReply, validated_tensors
from tests.localgrid import LocalGrid

KEYS = st.sampled_from(RunConfig.keys() + ["server-round", "bogus-key"])
VALUES = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6),
                   st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=30),
                   st.sampled_from(["fedavg", "fedref", "fedmerge", "cnn", "tiny-bert", "digits",
                                    "iid", "dirichlet", "pathological", "cpu", "cuda", "auto",
                                    "head", "all", "plain", "official", "clip", "reject"]))


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(KEYS, VALUES, max_size=6))
def test_run_config_is_accepted_or_rejected_with_a_config_error(values):
    try:
        config = run_config(values)
    except ConfigError as error:
        assert str(error)
    else:
        assert run_config(config.to_mapping()) == config


SENT = {"w": np.zeros((2, 3), np.float32), "b": np.zeros(3, np.float32)}
SHAPES = st.sampled_from([(2, 3), (3,), (3, 2), (1,), (0,), (2, 3, 1)])
DTYPES = st.sampled_from([np.float32, np.float64, np.float16, np.int32])
TENSOR = st.tuples(DTYPES, SHAPES).flatmap(lambda ds: arrays(ds[0], ds[1]))
GRID = LocalGrid.simulation(lambda m, c: None, 1)  # stamps the messages' identity


def _reply(tensors, count):
    message = Message(RecordDict(), dst_node_id=5, message_type=MessageType.TRAIN)
    message.metadata.__dict__["_message_id"] = "m"
    content = RecordDict({"arrays": to_array_record(tensors),
                          "metrics": MetricRecord({"num-examples": count})})
    return Message(content, reply_to=message)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(["w", "b", "x"]), TENSOR, max_size=3),
       st.one_of(st.integers(-5, 100), st.floats(allow_nan=True)),
       st.floats(0, 10), st.sampled_from(["reject", "clip"]))
def test_reply_validator_accepts_or_rejects_with_a_reason(tensors, count, limit, action):
    try:
        accepted = validated_tensors(_reply(tensors, count), SENT, "num-examples", limit, action)
    except RejectedReply as error:
        assert "reply of client" in str(error)
    else:
        assert accepted.keys() == SENT.keys()
        for name, value in accepted.items():
            assert value.shape == SENT[name].shape and np.isfinite(value).all()
        if limit > 0:
            norm = np.sqrt(sum(float((v.astype(np.float64) ** 2).sum()) for v in accepted.values()))
            assert norm <= limit * (1 + 1e-5)
