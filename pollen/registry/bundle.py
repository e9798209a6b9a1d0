"""AdapterBundle: a manifest, encoded tensors and a sha256 of the content.

The content digest is sha256 over the deterministic serialisations of the manifest and
then of each tensor, in name order; it is checked before anything is decoded. Decoding
also checks the manifest against the model that will receive the adapter (``expected``):
base model and the digest of its frozen weights, adapter type, rank, alpha, target
modules, family and number of classes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import numpy as np
from torch import nn

from pollen import wire
from pollen.adapters import is_adapter_model, is_head, travelling_module_names
from pollen.config import RunConfig
from pollen.v1 import adapters_pb2 as pb

ENCODING_NAMES = {"float32": pb.ENCODING_FLOAT32, "float16": pb.ENCODING_FLOAT16,
                  "bfloat16": pb.ENCODING_BFLOAT16, "int8": pb.ENCODING_INT8}
ENCODING_OF = {value: name for name, value in ENCODING_NAMES.items()}
SCOPE_NAMES = {"global": pb.SCOPE_GLOBAL, "family": pb.SCOPE_FAMILY, "client": pb.SCOPE_CLIENT}
CHECKED_FIELDS = ("base_model", "base_model_sha256", "adapter_type", "rank", "alpha",
                  "target_modules", "family", "num_classes", "experts", "banks")


class BundleError(ValueError):
    """Bytes that are not a valid bundle, or a bundle for another model."""


def base_model_digest(model: nn.Module) -> str:
    """sha256 over the names, shapes and float32 bytes of the frozen weights.

    The travelling tensors and the classifier head (trained, and sent, by every
    strategy) are left out, so two processes building the same base agree."""
    travelling = set(travelling_module_names(model).values())
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        if name in travelling or is_head(name):
            continue
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().to("cpu").float().contiguous().numpy().tobytes())
    return digest.hexdigest()


def manifest_for(model: nn.Module, config: RunConfig, num_classes: int, *, base_digest: str,
                 scope: str = "global", name: str = "", server_round: int = 0,
                 run_id: str = "") -> pb.AdapterManifest:
    """The manifest of ``model``'s adapter (``name`` is the client id or family of a
    client- or family-scoped adapter)."""
    from pollen.dema.model import DemaModel

    manifest = pb.AdapterManifest(
        base_model=config.model, base_model_sha256=base_digest,
        adapter_type=pb.ADAPTER_TYPE_FULL, client_id=name if scope == "client" else "",
        round=server_round, strategy=config.strategy, scope=SCOPE_NAMES[scope],
        num_classes=num_classes, run_id=run_id)
    if is_adapter_model(model):
        lora = model.peft_config[model.active_adapter]
        manifest.adapter_type = pb.ADAPTER_TYPE_LORA
        manifest.rank, manifest.alpha = lora.r, lora.lora_alpha
        manifest.target_modules.extend(sorted(lora.target_modules))
    elif isinstance(model, DemaModel):
        dema = model.dema_config
        manifest.adapter_type = pb.ADAPTER_TYPE_DEMA
        manifest.rank, manifest.experts, manifest.banks = dema.rank, dema.experts, dema.banks
        manifest.alpha = dema.alpha
        manifest.target_modules.extend(dema.target_modules)
        manifest.base_model = model.family
    if scope == "family":
        manifest.family = name
    return manifest


def _content_digest(manifest: pb.AdapterManifest, tensors) -> str:
    digest = hashlib.sha256(manifest.SerializeToString(deterministic=True))
    for tensor in tensors:
        digest.update(tensor.SerializeToString(deterministic=True))
    return digest.hexdigest()


def encode_bundle(manifest: pb.AdapterManifest, tensors: Mapping[str, np.ndarray],
                  encoding: str = "float32") -> bytes:
    records = []
    for name in sorted(tensors):
        data, scale = wire.encode(tensors[name], encoding, name)
        records.append(pb.Tensor(name=name, encoding=ENCODING_NAMES[encoding],
                                 shape=list(np.shape(tensors[name])), data=data, scale=scale))
    bundle = pb.AdapterBundle(manifest=manifest, tensors=records,
                              sha256=_content_digest(manifest, records))
    return bundle.SerializeToString(deterministic=True)


def read_manifest(data: bytes) -> pb.AdapterManifest:
    """The manifest of a serialized bundle whose content digest checks out."""
    return _parsed(data).manifest


def decode_bundle(data: bytes, expected: pb.AdapterManifest | None = None
                  ) -> tuple[pb.AdapterManifest, dict[str, np.ndarray]]:
    bundle = _parsed(data)
    if expected is not None:
        check_manifest(bundle.manifest, expected)
    tensors = {}
    for tensor in bundle.tensors:
        if tensor.encoding not in ENCODING_OF:
            raise BundleError(f"tensor '{tensor.name}' has unknown encoding {tensor.encoding}")
        try:
            tensors[tensor.name] = wire.decode(tensor.data, ENCODING_OF[tensor.encoding],
                                               tuple(tensor.shape), tensor.scale, tensor.name)
        except wire.WireError as error:
            raise BundleError(str(error)) from error
    return bundle.manifest, tensors


def check_manifest(received: pb.AdapterManifest, expected: pb.AdapterManifest) -> None:
    problems = [f"{field} is {_shown(getattr(received, field))}, the receiving model has "
                f"{_shown(getattr(expected, field))}"
                for field in CHECKED_FIELDS if getattr(received, field) != getattr(expected, field)]
    if problems:
        raise BundleError("the adapter does not fit this model: " + "; ".join(problems))


def _shown(value) -> str:
    return repr(list(value)) if not isinstance(value, (str, int)) else repr(value)


def _parsed(data: bytes) -> pb.AdapterBundle:
    try:
        bundle = pb.AdapterBundle.FromString(bytes(data))
    except Exception as error:  # protobuf raises DecodeError and, for some inputs, others
        raise BundleError(f"not an AdapterBundle ({len(data)} bytes): {error}") from error
    if not bundle.sha256:
        raise BundleError(f"not an AdapterBundle ({len(data)} bytes): no content sha256")
    actual = _content_digest(bundle.manifest, bundle.tensors)
    if actual != bundle.sha256:
        raise BundleError(f"content sha256 mismatch: the bundle says {bundle.sha256[:16]}..., "
                          f"its content hashes to {actual[:16]}... (corrupted or truncated)")
    return bundle
