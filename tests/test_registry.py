"""The adapter wire format and the registry: generated code, bundles, gRPC on loopback, CLI."""

import filecmp
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from google.protobuf import json_format
from hypothesis import given, settings
from hypothesis import strategies as st

from client_app.app import app as client_app
from pollen import cli
from pollen.adapters import travelling_state
from pollen.config import ConfigError, RunConfig
from pollen.models import build_model
from pollen.registry.bundle import (
    BundleError,
    base_model_digest,
    decode_bundle,
    encode_bundle,
    manifest_for,
)
from pollen.registry.client import PARTIAL, PARTIAL_META, connect, fetch, list_adapters, publish
from pollen.registry.publisher import TOKEN_VARIABLE
from pollen.registry.server import serve
from pollen.v1 import adapters_pb2 as pb
from pollen.v1.adapters_pb2_grpc import AdapterRegistryStub
from server_app.app import run
from strategies import run_config
from tests.localgrid import LocalGrid

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "s3cret-token"
TINY = RunConfig(model="tiny-bert", lora_r=4, lora_alpha=8)


def test_the_committed_generated_code_matches_the_proto(tmp_path):
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", "-I", str(ROOT / "proto"),
                    f"--python_out={tmp_path}", f"--grpc_python_out={tmp_path}",
                    f"--pyi_out={tmp_path}", str(ROOT / "proto/pollen/v1/adapters.proto")],
                   check=True)
    generated = sorted(p.name for p in (tmp_path / "pollen/v1").iterdir())
    assert generated == ["adapters_pb2.py", "adapters_pb2.pyi", "adapters_pb2_grpc.py"]
    _, mismatch, errors = filecmp.cmpfiles(tmp_path / "pollen/v1", ROOT / "pollen/v1",
                                           generated, shallow=False)
    assert mismatch == [] and errors == [], "regenerate pollen/v1 as proto/README.md says"


@pytest.fixture(scope="module")
def tiny():
    model = build_model(TINY, 4)
    return model, base_model_digest(model)


def tiny_bundle(tiny, encoding="float32", **manifest_fields):
    model, digest = tiny
    manifest = manifest_for(model, TINY, 4, base_digest=digest, run_id="run-a",
                            server_round=1)
    for field, value in manifest_fields.items():
        setattr(manifest, field, value)
    return encode_bundle(manifest, travelling_state(model), encoding)


@pytest.mark.parametrize("encoding, bound", [("float32", 0.0), ("float16", 2.0 ** -11),
                                              ("bfloat16", 2.0 ** -8), ("int8", None)])
def test_bundle_round_trip_per_encoding(tiny, encoding, bound):
    model, digest = tiny
    state = travelling_state(model)
    expected = manifest_for(model, TINY, 4, base_digest=digest)
    manifest, tensors = decode_bundle(tiny_bundle(tiny, encoding), expected)
    assert manifest.rank == 4 and list(manifest.target_modules) == ["query", "value"]
    assert tensors.keys() == state.keys()
    for name, value in state.items():
        error = np.abs(tensors[name] - value)
        if bound is None:  # int8: half a quantisation step
            assert np.all(error <= np.abs(value).max() / 127 / 2 * (1 + 1e-6))
        else:
            assert np.all(error <= np.abs(value) * bound + 1e-30)


@pytest.mark.parametrize("field, value, message", [
    ("base_model", "minilm", "base_model is 'minilm', the receiving model has 'tiny-bert'"),
    ("base_model_sha256", "0" * 64, "base_model_sha256 is '000"),
    ("rank", 8, "rank is 8, the receiving model has 4"),
    ("family", "minilm-l2", "family is 'minilm-l2', the receiving model has ''"),
])
def test_a_bundle_for_another_model_is_refused_by_name(tiny, field, value, message):
    model, digest = tiny
    expected = manifest_for(model, TINY, 4, base_digest=digest)
    with pytest.raises(BundleError, match="does not fit this model: " + message):
        decode_bundle(tiny_bundle(tiny, **{field: value}), expected)


def test_truncated_or_altered_bundles_are_refused(tiny):
    data = tiny_bundle(tiny)
    with pytest.raises(BundleError):
        decode_bundle(data[:-10])
    altered = bytearray(data)
    altered[len(data) // 2] ^= 0xFF
    with pytest.raises(BundleError, match="sha256 mismatch|not an AdapterBundle"):
        decode_bundle(bytes(altered))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512))
def test_the_bundle_decoder_fails_only_with_a_bundle_error(data):
    with pytest.raises(BundleError):
        decode_bundle(data)


# --- the registry on loopback --------------------------------------------------------------

@pytest.fixture(scope="module")
def certificates(tmp_path_factory):
    out = tmp_path_factory.mktemp("certs")
    subprocess.run(["bash", str(ROOT / "deploy/pollen-certs.sh"), "certs", str(out), "1"],
                   check=True, capture_output=True)
    return {name: (out / name).read_bytes() for name in ("ca.crt", "superlink.crt",
                                                         "superlink.key")}


@pytest.fixture
def registry(tmp_path, certificates):
    server, port = serve("127.0.0.1:0", tmp_path / "store", TOKEN,
                         certificates["superlink.crt"], certificates["superlink.key"])
    channel = connect(f"localhost:{port}", certificates["ca.crt"])
    yield channel, port, tmp_path / "store"
    channel.close()
    server.stop(grace=None)


def big_bundle(run_id="run-big", server_round=1, megabytes=6):
    manifest = pb.AdapterManifest(base_model="cnn", run_id=run_id, round=server_round,
                                  scope=pb.SCOPE_GLOBAL, adapter_type=pb.ADAPTER_TYPE_FULL)
    rng = np.random.default_rng(server_round)
    tensors = {"w": rng.normal(size=(megabytes * 1024 * 256,)).astype(np.float32)}
    return encode_bundle(manifest, tensors), tensors


def test_publish_list_and_fetch_latest_and_a_given_round(registry, tiny, tmp_path):
    channel, _, _ = registry
    first = tiny_bundle(tiny)
    second = tiny_bundle(tiny, round=2)
    client = tiny_bundle(tiny, round=2, scope=pb.SCOPE_CLIENT, client_id="alice")
    for data in (first, second, client):
        reply = publish(channel, data, TOKEN)
        assert reply.size == len(data)
    entries = list_adapters(channel)
    assert sorted((e.key.scope, e.key.name, e.key.round) for e in entries) == [
        (pb.SCOPE_GLOBAL, "", 1), (pb.SCOPE_GLOBAL, "", 2), (pb.SCOPE_CLIENT, "alice", 2)]
    latest = fetch(channel, pb.AdapterKey(scope=pb.SCOPE_GLOBAL), tmp_path / "a")
    assert latest.data == second and latest.resumed_from == 0
    assert fetch(channel, pb.AdapterKey(scope=pb.SCOPE_GLOBAL, round=1),
                 tmp_path / "b").data == first
    assert fetch(channel, pb.AdapterKey(scope=pb.SCOPE_CLIENT, name="alice"),
                 tmp_path / "c").data == client
    with pytest.raises(grpc.RpcError) as missing:
        fetch(channel, pb.AdapterKey(scope=pb.SCOPE_GLOBAL, round=7), tmp_path / "d")
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    assert "has no round 7" in missing.value.details()


def test_an_adapter_larger_than_grpcs_message_limit_streams_in_chunks(registry, tmp_path):
    channel, _, _ = registry
    data, tensors = big_bundle()
    assert len(data) > 4 * 1024 * 1024
    publish(channel, data, TOKEN)
    fetched = fetch(channel, pb.AdapterKey(scope=pb.SCOPE_GLOBAL, run_id="run-big"),
                    tmp_path / "out")
    assert fetched.data == data
    assert np.array_equal(decode_bundle(fetched.data)[1]["w"], tensors["w"])


def test_a_wrong_token_is_refused(registry, tiny):
    channel, _, store = registry
    for token in ("wrong", ""):
        with pytest.raises(grpc.RpcError) as refused:
            publish(channel, tiny_bundle(tiny), token)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert list_adapters(channel) == []


def test_corrupted_truncated_and_random_streams_are_refused_and_the_registry_lives(registry,
                                                                                  tiny):
    channel, _, _ = registry
    data = tiny_bundle(tiny)
    digest = hashlib.sha256(data).hexdigest()
    calls = AdapterRegistryStub(channel)
    auth = [("authorization", f"Bearer {TOKEN}")]
    corrupted = bytearray(data)
    corrupted[10] ^= 0x01
    cases = {
        "corrupted": [pb.Chunk(offset=0, data=bytes(corrupted), total_size=len(data),
                               bundle_sha256=digest)],
        "truncated": [pb.Chunk(offset=0, data=data[:100], total_size=len(data),
                               bundle_sha256=digest)],
        "out of order": [pb.Chunk(offset=5, data=data, total_size=len(data),
                                  bundle_sha256=digest)],
        "random": [pb.Chunk(offset=0, data=b"\x07" * 64, total_size=64,
                            bundle_sha256=hashlib.sha256(b"\x07" * 64).hexdigest())],
    }
    codes = {}
    for name, chunks in cases.items():
        with pytest.raises(grpc.RpcError) as refused:
            calls.Publish(iter(chunks), metadata=auth)
        codes[name] = (refused.value.code(), refused.value.details())
    assert codes["corrupted"][0] == grpc.StatusCode.DATA_LOSS
    assert "corrupted" in codes["corrupted"][1]
    assert codes["truncated"][0] == grpc.StatusCode.DATA_LOSS
    assert "after 100 of" in codes["truncated"][1]
    assert codes["out of order"][0] == grpc.StatusCode.INVALID_ARGUMENT
    assert codes["random"][0] == grpc.StatusCode.INVALID_ARGUMENT
    assert "not an AdapterBundle" in codes["random"][1]
    assert publish(channel, data, TOKEN).size == len(data)  # still serving


def test_an_interrupted_fetch_resumes_from_its_offset(registry, tmp_path):
    channel, _, store = registry
    data, _ = big_bundle(megabytes=5)
    publish(channel, data, TOKEN)
    key = pb.AdapterKey(scope=pb.SCOPE_GLOBAL, run_id="run-big")
    out = tmp_path / "out"
    # What an interrupted fetch leaves behind: the first 3 MiB and the key's record.
    first = fetch(channel, key, tmp_path / "probe")
    out.mkdir()
    (out / PARTIAL).write_bytes(data[:3 << 20])
    (out / PARTIAL_META).write_text(json.dumps({
        "key": json_format.MessageToDict(key),
        "bundle_sha256": hashlib.sha256(first.data).hexdigest()}))
    resumed = fetch(channel, key, out)
    assert resumed.data == data
    assert resumed.resumed_from == 3 << 20 and resumed.received == len(data) - (3 << 20)
    assert not (out / PARTIAL).exists() and not (out / PARTIAL_META).exists()
    # A partial file for a bundle the registry no longer holds is started over.
    (out / PARTIAL).write_bytes(b"x" * 1000)
    (out / PARTIAL_META).write_text(json.dumps({"key": json_format.MessageToDict(key),
                                                "bundle_sha256": "f" * 64}))
    restarted = fetch(channel, key, out)
    assert restarted.data == data and restarted.resumed_from == 0
    # So is one longer than the bundle (the registry answers OUT_OF_RANGE).
    (out / PARTIAL).write_bytes(b"x" * (len(data) + 1))
    (out / PARTIAL_META).write_text(json.dumps({"key": json_format.MessageToDict(key),
                                                "bundle_sha256": ""}))
    assert fetch(channel, key, out).data == data


def test_the_cli_fetch_writes_a_folder_peft_loads(registry, tiny, tmp_path, certificates):
    from peft import PeftModel

    from pollen.models import build_backbone

    channel, port, _ = registry
    model, _ = tiny
    torch.manual_seed(3)
    for parameter in model.parameters():  # a trained-looking adapter, not the initial one
        if parameter.requires_grad:
            parameter.data.normal_(0, 0.05)
    publish(channel, tiny_bundle(tiny), TOKEN)
    ca = tmp_path / "ca.crt"
    ca.write_bytes(certificates["ca.crt"])
    cli.main(["adapters", "fetch", "--registry", f"localhost:{port}", "--ca-cert", str(ca),
              "--out", str(tmp_path / "adapter")])
    loaded = PeftModel.from_pretrained(build_backbone("tiny-bert", 4, TINY.seed),
                                       tmp_path / "adapter").eval()
    ids = torch.randint(0, 1000, (2, 12))
    model.eval()
    with torch.no_grad():
        assert torch.allclose(loaded(input_ids=ids).logits, model(input_ids=ids).logits,
                              atol=1e-6)
    with pytest.raises(SystemExit, match="base_model is 'tiny-bert', the receiving model "
                                         "has 'minilm-l2'"):
        cli.main(["adapters", "fetch", "--registry", f"localhost:{port}", "--ca-cert",
                  str(ca), "--model", "minilm-l2", "--out", str(tmp_path / "other")])


# --- the server app publishes every round ---------------------------------------------------

def test_the_server_app_publishes_every_rounds_adapters(tmp_path, monkeypatch):
    server, port = serve("127.0.0.1:0", tmp_path / "store", TOKEN)
    try:
        common = {"num-server-rounds": 2, "output-dir": str(tmp_path),
                  "registry-address": f"127.0.0.1:{port}", "strategy": "fedmerge",
                  "fedmerge.num-global-models": 2}
        monkeypatch.delenv(TOKEN_VARIABLE, raising=False)
        with pytest.raises(ConfigError, match=f"{TOKEN_VARIABLE} is not"):
            run(LocalGrid.simulation(client_app, num_nodes=3),
                run_config({**common, "run-name": "no-token"}))
        monkeypatch.setenv(TOKEN_VARIABLE, TOKEN)
        outputs = run(LocalGrid.simulation(client_app, num_nodes=3),
                      run_config({**common, "run-name": "published"}))
        rows = outputs.read_metrics()
        assert rows[-1]["registry_published"] == [
            "client/0@2", "client/1@2", "client/2@2", "global@2"]
        with connect(f"127.0.0.1:{port}", None) as channel:
            entries = list_adapters(channel, "published")
        assert sorted((e.key.scope, e.key.name, e.key.round) for e in entries) == sorted(
            [(pb.SCOPE_GLOBAL, "", r) for r in (1, 2)]
            + [(pb.SCOPE_CLIENT, c, r) for c in "012" for r in (1, 2)])
        assert {e.manifest.strategy for e in entries} == {"fedmerge"}
    finally:
        server.stop(grace=None)


def test_an_llm_adapter_travels_through_a_bundle_into_a_folder_peft_loads(tmp_path):
    from peft import PeftModel

    from pollen.models import build_backbone
    from pollen.registry.client import write_adapter_folder

    config = RunConfig(model="tiny-llama", task="instruct", seed=5)
    model = build_model(config, 0)
    torch.manual_seed(3)
    for parameter in model.parameters():  # a trained-looking adapter: B no longer zero
        if parameter.requires_grad:
            parameter.data.normal_(0, 0.05)
    manifest = manifest_for(model, config, 0, base_digest=base_model_digest(model),
                            run_id="llm", server_round=1)
    write_adapter_folder(encode_bundle(manifest, travelling_state(model)), tmp_path, seed=5)
    loaded = PeftModel.from_pretrained(build_backbone("tiny-llama", 0, 5, "instruct"),
                                       tmp_path).eval()
    ids = torch.randint(0, 1000, (2, 12))
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids).logits, model.eval()(input_ids=ids).logits)
    assert json.loads((tmp_path / "adapter_config.json").read_text())["task_type"] == "CAUSAL_LM"
