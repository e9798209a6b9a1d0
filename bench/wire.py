"""Wire encodings and the adapter registry.

    python -m bench.wire agnews [--rounds 3]
    python -m bench.wire registry

agnews: FedAvg on AG News test.csv with MiniLM + LoRA, 10 clients, Dirichlet 0.5, lr 0.003,
1 local epoch, seed 42, once per wire-dtype (float32, float16, bfloat16, int8); bytes per
round and global accuracy against the float32 run. About 2.5 minutes a round per run.

registry: fetch throughput of a registry on loopback (TLS with certificates from
deploy/pollen-certs.sh, and plaintext) against copying the same stored bundle file on
disk, for MiniLM's real LoRA adapter and for a 64 MiB bundle; 5 repetitions each, the
median reported. About a minute.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import AG_NEWS, ROOT, simulate, write_report

ENCODINGS = ("float32", "float16", "bfloat16", "int8")


def agnews(rounds: int) -> None:
    common = {"dataset": str(AG_NEWS), "model": "minilm", "lr": 0.003, "local-epochs": 1,
              "partitioner": "dirichlet", "dirichlet-alpha": 0.5, "strategy": "fedavg",
              "num-server-rounds": rounds, "seed": 42}
    results = {}
    for encoding in ENCODINGS:
        _, rows, seconds = simulate({**common, "wire-dtype": encoding}, 10, f"wire-{encoding}")
        results[encoding] = (rows, seconds)
    base_rows = results["float32"][0]
    lines = [f"AG News, MiniLM + LoRA r=8, FedAvg, 10 clients, Dirichlet 0.5, {rounds} rounds, "
             "seed 42. Bytes are the tensors of every message of a round as sent (train down "
             "+ evaluate down, and train up), mean over rounds.", "",
             "| wire-dtype | bytes up / round | bytes down / round | ratio to float32 | "
             "final acc | change vs float32 | acc per round |", "|---|---|---|---|---|---|---|"]
    base_bytes = np.mean([r["bytes_up"] + r["bytes_down"] for r in base_rows])
    for encoding, (rows, _) in results.items():
        up = np.mean([r["bytes_up"] for r in rows])
        down = np.mean([r["bytes_down"] for r in rows])
        final = rows[-1]["eval_accuracy"]
        lines.append(f"| {encoding} | {up:,.0f} | {down:,.0f} | {(up + down) / base_bytes:.4f} "
                     f"| {final:.4f} | {final - base_rows[-1]['eval_accuracy']:+.4f} | "
                     + ", ".join(f"{r['eval_accuracy']:.4f}" for r in rows) + " |")
    write_report("wire-agnews", "Wire dtypes on AG News (FedAvg, MiniLM + LoRA)",
                 f"python -m bench.wire agnews --rounds {rounds}", "\n".join(lines))


def _median_seconds(action, repetitions: int = 5) -> float:
    times = []
    for _ in range(repetitions):
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def registry() -> None:
    from pollen.adapters import travelling_state
    from pollen.config import RunConfig
    from pollen.models import build_model
    from pollen.registry.bundle import base_model_digest, encode_bundle, manifest_for
    from pollen.registry.client import connect, fetch, publish
    from pollen.registry.server import serve
    from pollen.v1 import adapters_pb2 as pb

    config = RunConfig(model="minilm")
    model = build_model(config, 4)
    adapter = encode_bundle(manifest_for(model, config, 4, base_digest=base_model_digest(model),
                                         run_id="minilm"), travelling_state(model))
    big = encode_bundle(pb.AdapterManifest(base_model="cnn", run_id="big", round=1,
                                           scope=pb.SCOPE_GLOBAL),
                        {"w": np.random.default_rng(0).normal(size=16 << 20).astype(np.float32)})
    lines = ["Loopback on this machine (2 cores); median of 5 fetches (each a fresh "
             "download into an empty folder, sha256 checked) against 5 copies of the stored "
             "bundle file with shutil.copyfile.", "",
             "| bundle | bytes | transport | fetch s | fetch MB/s | copy s | copy MB/s | "
             "fetch / copy time |", "|---|---|---|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        subprocess.run(["bash", str(ROOT / "deploy/pollen-certs.sh"), "certs",
                        str(work / "certs"), "1"], check=True, capture_output=True)
        certs = {n: (work / "certs" / n).read_bytes()
                 for n in ("ca.crt", "superlink.crt", "superlink.key")}
        for transport in ("TLS", "plaintext"):
            tls = transport == "TLS"
            server, port = serve("127.0.0.1:0", work / f"store-{transport}", "token",
                                 certs["superlink.crt"] if tls else None,
                                 certs["superlink.key"] if tls else None)
            channel = connect(f"localhost:{port}", certs["ca.crt"] if tls else None)
            for label, data, run_id in (("MiniLM LoRA adapter", adapter, "minilm"),
                                        ("64 MiB", big, "big")):
                publish(channel, data, "token")
                key = pb.AdapterKey(scope=pb.SCOPE_GLOBAL, run_id=run_id)
                stored = next((work / f"store-{transport}" / run_id).rglob("*.bundle"))
                count = iter(range(1000))

                def fetch_once() -> None:
                    result = fetch(channel, key, work / f"fetch-{next(count)}")
                    assert result.data == data

                def copy_once() -> None:
                    shutil.copyfile(stored, work / f"copy-{next(count)}")

                fetch_s = _median_seconds(fetch_once)
                copy_s = _median_seconds(copy_once)
                mb = len(data) / 1e6
                lines.append(f"| {label} | {len(data):,} | {transport} | {fetch_s:.4f} | "
                             f"{mb / fetch_s:.1f} | {copy_s:.4f} | {mb / copy_s:.1f} | "
                             f"{fetch_s / copy_s:.1f} |")
            channel.close()
            server.stop(grace=None)
    write_report("wire-registry", "Adapter registry fetch throughput on loopback",
                 "python -m bench.wire registry", "\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("suite", choices=("agnews", "registry"))
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    agnews(args.rounds) if args.suite == "agnews" else registry()


if __name__ == "__main__":
    main()
