"""The AdapterRegistry gRPC service and the folder it stores bundles in.

Store layout: ``<root>/<run_id>/<scope>/<name or _>/round-<N>.bundle`` (written to a
temporary file and renamed, so a reader never sees half a bundle) and ``<root>/LATEST_RUN``.
A run id of "" in a request means the run published last; round 0 means its latest round.

Every bad request ends in a gRPC status that names the problem, never in a crashed
server: UNAUTHENTICATED (Publish without the token), INVALID_ARGUMENT (chunks out of
order, bytes that are not a bundle), DATA_LOSS (a stream shorter than announced, a chunk
that changed the bundle's sha256), NOT_FOUND, OUT_OF_RANGE (resume offset past the end).
Messages stay under gRPC's default 4 MB limit because bundles travel in 1 MiB chunks.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import tempfile
from concurrent import futures
from pathlib import Path

import grpc

from pollen.registry.bundle import BundleError, read_manifest
from pollen.v1 import adapters_pb2 as pb
from pollen.v1 import adapters_pb2_grpc as pb_grpc

logger = logging.getLogger(__name__)
CHUNK_BYTES = 1 << 20
MAX_BUNDLE_BYTES = 2 << 30
SCOPE_FOLDERS = {pb.SCOPE_GLOBAL: "global", pb.SCOPE_FAMILY: "family", pb.SCOPE_CLIENT: "client"}
_SAFE_NAME = re.compile(r"^[A-Za-z0-9._-]{1,128}$")


class StoreError(ValueError):
    """A key that names nothing stored, or that cannot name a folder."""


class RegistryStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def _folder(self, run_id: str, scope: int, name: str) -> Path:
        if scope not in SCOPE_FOLDERS:
            raise StoreError(f"unknown scope {scope}")
        if scope == pb.SCOPE_GLOBAL:
            name = ""
        elif not name:
            raise StoreError(f"a {SCOPE_FOLDERS[scope]} adapter needs a name")
        for part in (run_id, name or "_"):
            if not _SAFE_NAME.match(part) or part in (".", ".."):
                raise StoreError(f"'{part}' cannot be a run id or adapter name (use letters, "
                                 "digits, '.', '_' and '-')")
        return self.root / run_id / SCOPE_FOLDERS[scope] / (name or "_")

    def put(self, manifest: pb.AdapterManifest, data: bytes) -> pb.AdapterKey:
        name = manifest.client_id if manifest.scope == pb.SCOPE_CLIENT else manifest.family
        folder = self._folder(manifest.run_id, manifest.scope, name)
        folder.mkdir(parents=True, exist_ok=True)
        _atomic_write(folder / f"round-{manifest.round}.bundle", data)
        _atomic_write(self.root / "LATEST_RUN", manifest.run_id.encode())
        return pb.AdapterKey(scope=manifest.scope, name=name, run_id=manifest.run_id,
                             round=manifest.round)

    def resolve(self, key: pb.AdapterKey) -> Path:
        run_id = key.run_id
        if not run_id:
            latest = self.root / "LATEST_RUN"
            if not latest.is_file():
                raise StoreError("nothing has been published yet")
            run_id = latest.read_text()
        folder = self._folder(run_id, key.scope, key.name)
        rounds = sorted(int(p.stem.split("-")[1]) for p in folder.glob("round-*.bundle"))
        if not rounds:
            raise StoreError(f"no {SCOPE_FOLDERS[key.scope]} adapter"
                             f"{' ' + repr(key.name) if key.name else ''} in run '{run_id}'")
        wanted = key.round or rounds[-1]
        if wanted not in rounds:
            raise StoreError(f"run '{run_id}' has no round {wanted} of that adapter; it has "
                             f"rounds {rounds}")
        return folder / f"round-{wanted}.bundle"

    def entries(self, run_id: str = "") -> list[pb.ListEntry]:
        found = []
        for path in sorted(self.root.glob("*/*/*/round-*.bundle")):
            data = path.read_bytes()
            try:
                manifest = read_manifest(data)
            except BundleError as error:  # damaged on disk since it was published
                logger.warning("registry: %s left out of List: %s", path, error)
                continue
            if run_id and manifest.run_id != run_id:
                continue
            name = path.parent.name if path.parent.name != "_" else ""
            found.append(pb.ListEntry(
                key=pb.AdapterKey(scope=manifest.scope, name=name, run_id=manifest.run_id,
                                  round=manifest.round),
                manifest=manifest, size=len(data),
                bundle_sha256=hashlib.sha256(data).hexdigest()))
        return found


def _atomic_write(path: Path, data: bytes) -> None:
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    with os.fdopen(handle, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    os.replace(temporary, path)


class AdapterRegistryService(pb_grpc.AdapterRegistryServicer):
    def __init__(self, store: RegistryStore, token: str) -> None:
        if not token:
            raise ValueError("the registry needs a publish token")
        self.store, self.token = store, token

    def Publish(self, request_iterator, context):
        offered = dict(context.invocation_metadata()).get("authorization", "")
        if not hmac.compare_digest(offered.encode(), f"Bearer {self.token}".encode()):
            context.abort(grpc.StatusCode.UNAUTHENTICATED,
                          "Publish needs the registry's token (authorization: Bearer <token>)")
        buffer, total, announced = bytearray(), None, ""
        for chunk in request_iterator:
            if total is None:
                total, announced = chunk.total_size, chunk.bundle_sha256
                if total > MAX_BUNDLE_BYTES:
                    context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                  f"bundle of {total} bytes exceeds {MAX_BUNDLE_BYTES}")
            if chunk.offset != len(buffer) or chunk.total_size != total:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                              f"chunk at offset {chunk.offset} (total {chunk.total_size}); "
                              f"expected offset {len(buffer)} (total {total})")
            if len(buffer) + len(chunk.data) > total:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                              f"chunks exceed the announced {total} bytes")
            buffer += chunk.data
        if total is None:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "Publish received no chunks")
        if len(buffer) != total:
            context.abort(grpc.StatusCode.DATA_LOSS,
                          f"the stream ended after {len(buffer)} of {total} bytes (truncated)")
        if hashlib.sha256(buffer).hexdigest() != announced:
            context.abort(grpc.StatusCode.DATA_LOSS,
                          "the received bytes do not hash to the announced bundle sha256 "
                          "(a chunk was corrupted)")
        try:
            key = self.store.put(read_manifest(bytes(buffer)), bytes(buffer))
        except (BundleError, StoreError) as error:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        return pb.PublishReply(key=key, size=total)

    def Fetch(self, request, context):
        try:
            data = self.store.resolve(request.key).read_bytes()
        except StoreError as error:
            context.abort(grpc.StatusCode.NOT_FOUND, str(error))
        if request.offset > len(data):
            context.abort(grpc.StatusCode.OUT_OF_RANGE,
                          f"offset {request.offset} is past the bundle's {len(data)} bytes")
        digest = hashlib.sha256(data).hexdigest()
        start = request.offset
        while True:
            piece = data[start:start + CHUNK_BYTES]
            yield pb.Chunk(offset=start, data=piece, total_size=len(data), bundle_sha256=digest)
            start += len(piece)
            if start >= len(data):
                return

    def List(self, request, context):
        return pb.ListReply(entries=self.store.entries(request.run_id))


def serve(address: str, store_dir: Path, token: str,
          certificate_chain: bytes | None = None, private_key: bytes | None = None,
          max_workers: int = 8) -> tuple[grpc.Server, int]:
    """Start the registry; returns the server and the port it bound (address may end in
    :0). Without a certificate the port is plaintext: only for loopback and tests."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers))
    pb_grpc.add_AdapterRegistryServicer_to_server(
        AdapterRegistryService(RegistryStore(store_dir), token), server)
    if certificate_chain is not None:
        credentials = grpc.ssl_server_credentials([(private_key, certificate_chain)])
        port = server.add_secure_port(address, credentials)
    else:
        port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"the registry could not bind {address}")
    server.start()
    return server, port
