"""Talking to an AdapterRegistry: publish, list, and fetch with resume.

A fetch writes the bundle's bytes to ``<out>/.pollen-fetch.partial`` as they arrive, with
the key and the bundle's sha256 beside it in ``.pollen-fetch.json``. Run again after an
interruption, it asks for the rest from the partial file's size; if the registry's
bundle for that key has changed meanwhile (another sha256), it starts over. The finished
bytes must hash to the announced sha256, and the bundle must fit the receiving model;
then it is written as a peft-format folder (``write_adapter_folder``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import grpc
from google.protobuf import json_format

from pollen.registry.server import CHUNK_BYTES
from pollen.v1 import adapters_pb2 as pb
from pollen.v1 import adapters_pb2_grpc as pb_grpc

PARTIAL = ".pollen-fetch.partial"
PARTIAL_META = ".pollen-fetch.json"


class FetchError(RuntimeError):
    """The registry's bytes did not arrive whole."""


@dataclass(frozen=True)
class FetchResult:
    data: bytes
    resumed_from: int  # bytes already on disk before this call
    received: int  # bytes this call received


def connect(address: str, root_certificates: bytes | None) -> grpc.Channel:
    """TLS with the deployment's CA certificate; plaintext only when none is given."""
    if root_certificates is None:
        return grpc.insecure_channel(address)
    return grpc.secure_channel(address, grpc.ssl_channel_credentials(root_certificates))


def publish(channel: grpc.Channel, bundle: bytes, token: str,
            chunk_bytes: int = CHUNK_BYTES) -> pb.PublishReply:
    digest = hashlib.sha256(bundle).hexdigest()
    chunks = (pb.Chunk(offset=start, data=bundle[start:start + chunk_bytes],
                       total_size=len(bundle), bundle_sha256=digest)
              for start in range(0, max(len(bundle), 1), chunk_bytes))
    return pb_grpc.AdapterRegistryStub(channel).Publish(
        chunks, metadata=[("authorization", f"Bearer {token}")])


def list_adapters(channel: grpc.Channel, run_id: str = "") -> list[pb.ListEntry]:
    return list(pb_grpc.AdapterRegistryStub(channel).List(pb.ListRequest(run_id=run_id)).entries)


def fetch(channel: grpc.Channel, key: pb.AdapterKey, work_dir: Path) -> FetchResult:
    """The whole serialized bundle for ``key``, resuming a partial download in work_dir."""
    work_dir.mkdir(parents=True, exist_ok=True)
    partial, meta_path = work_dir / PARTIAL, work_dir / PARTIAL_META
    wanted = json_format.MessageToDict(key)
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    if meta.get("key") != wanted or not partial.is_file():
        partial.write_bytes(b"")
        meta = {"key": wanted, "bundle_sha256": ""}
    try:
        return _fetch_from(channel, key, partial, meta_path, meta)
    except _StalePartial:
        partial.unlink()
        meta_path.unlink(missing_ok=True)
        return fetch(channel, key, work_dir)


def _fetch_from(channel: grpc.Channel, key: pb.AdapterKey, partial: Path, meta_path: Path,
                meta: dict) -> FetchResult:
    offset = partial.stat().st_size
    stub = pb_grpc.AdapterRegistryStub(channel)
    received, total, digest = 0, None, ""
    chunks = stub.Fetch(pb.FetchRequest(key=key, offset=offset))
    with partial.open("ab") as out:
        for chunk in _restartable(chunks, offset):
            if total is None:
                total, digest = chunk.total_size, chunk.bundle_sha256
                if meta["bundle_sha256"] and meta["bundle_sha256"] != digest and offset:
                    raise _StalePartial  # the registry holds another bundle now
                meta["bundle_sha256"] = digest
                meta_path.write_text(json.dumps(meta))
            if chunk.offset != offset + received:
                raise FetchError(f"chunk at offset {chunk.offset}, expected {offset + received}")
            out.write(chunk.data)
            out.flush()
            received += len(chunk.data)
    data = partial.read_bytes()
    if total is None or len(data) != total:
        raise FetchError(f"the transfer ended after {len(data)} of {total} bytes; run the "
                         "fetch again to resume it")
    if hashlib.sha256(data).hexdigest() != digest:
        partial.unlink()
        meta_path.unlink()
        raise FetchError("the fetched bytes do not hash to the registry's sha256 (corrupted "
                         "in transit or on disk); the partial download was removed")
    partial.unlink()
    meta_path.unlink()
    return FetchResult(data, offset, received)


class _StalePartial(Exception):
    """The partial download belongs to another bundle than the registry now holds."""


def _restartable(chunks, offset: int):
    """The registry's chunks; a partial file longer than the bundle (OUT_OF_RANGE) means
    it belongs to another bundle, and the caller starts over."""
    try:
        yield from chunks
    except grpc.RpcError as error:
        if offset and error.code() == grpc.StatusCode.OUT_OF_RANGE:
            raise _StalePartial from error
        raise


def write_adapter_folder(data: bytes, out_dir: Path, model_name: str = "",
                         seed: int = 42) -> pb.AdapterManifest:
    """Check a fetched bundle against the model this machine builds and save it in peft's
    format (``PeftModel.from_pretrained(base, out_dir)`` loads it), DeMA's format
    (``pollen.dema.load_dema_adapter``) or, for full models, as model.safetensors.

    The receiving model is ``model_name`` (default: the manifest's base model) with the
    manifest's LoRA settings and classes; ``seed`` matters only for randomly initialised
    bases (tiny-bert), whose frozen weights it determines."""
    from pollen.adapters import load_travelling_state, save_final_model
    from pollen.config import RunConfig
    from pollen.dema import DemaConfig, inject_dema
    from pollen.models import build_backbone, build_model
    from pollen.registry.bundle import base_model_digest, decode_bundle, manifest_for, read_manifest

    manifest = read_manifest(data)
    base = model_name or manifest.base_model
    task = "instruct" if manifest.num_classes == 0 else "classify"  # the proto's reading
    config = RunConfig(model=base, task=task, lora_r=max(manifest.rank, 1),
                       lora_alpha=max(manifest.alpha, 1),
                       lora_target_modules=",".join(manifest.target_modules) or "query,value",
                       seed=seed)
    if manifest.adapter_type == pb.ADAPTER_TYPE_DEMA:
        dema = DemaConfig(rank=max(manifest.rank, 1), experts=max(manifest.experts, 1),
                          banks=manifest.banks, target_modules=tuple(manifest.target_modules),
                          seed=seed, alpha=max(manifest.alpha, 1))
        model = inject_dema(build_backbone(base, manifest.num_classes, seed), dema, base)
    else:
        model = build_model(config, manifest.num_classes)
    expected = manifest_for(model, config, manifest.num_classes,
                            base_digest=base_model_digest(model),
                            scope="family" if manifest.family else "global",
                            name=manifest.family)
    _, tensors = decode_bundle(data, expected)
    load_travelling_state(model, tensors, what="fetched adapter")
    save_final_model(model, out_dir)
    return manifest
