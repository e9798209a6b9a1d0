"""The loopback deployment's commands, in one place: the loopback test runs them and the
drift test compares deploy/docker-compose.yml against them.

The topology is the compose file's: the SuperLink and every SuperNode run with
``--isolation process``, and a separate ``flower-superexec`` runs the ServerApp (over TLS,
like the compose ``serverapp`` service) and each SuperNode's ClientApps (like the
``clientapp-<i>`` services)."""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import TOPICS
from tests.processes import Started

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
CERTS_SCRIPT = ROOT / "deploy" / "pollen-certs.sh"
NODE_CONFIG_KEYS = ("client-id", "data-path", "model", "device")
# Flower's SuperExec looks for new tasks every second by default; the compose file's
# SuperExecs (serverapp, clientapp-<i>) set the same.
SUPEREXEC_ENV = {"FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.2"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def superlink_command(certs: Path, database: Path, fleet_port: int,
                      control_port: int) -> list[str]:
    return [str(BIN / "flower-superlink"),
            "--ssl-ca-certfile", str(certs / "ca.crt"),
            "--ssl-certfile", str(certs / "superlink.crt"),
            "--ssl-keyfile", str(certs / "superlink.key"),
            "--enable-supernode-auth",
            "--database", str(database),
            "--isolation", "process",
            "--disable-runtime-dependency-installation",
            "--fleet-api-address", f"127.0.0.1:{fleet_port}",
            "--host", "127.0.0.1",
            "--port", str(control_port)]


def node_config_text(values: dict[str, str]) -> str:
    return " ".join(f"{key}='{value}'" for key, value in values.items())


def supernode_command(ca: Path | None, fleet_port: int, key: Path | None,
                      node_config: dict[str, str], port: int) -> list[str]:
    command = [str(BIN / "flower-supernode"), "--superlink", f"127.0.0.1:{fleet_port}"]
    if ca is not None:
        command += ["--root-certificates", str(ca)]
    if key is not None:
        command += ["--auth-supernode-private-key", str(key)]
    return command + ["--node-config", node_config_text(node_config),
                      "--isolation", "process", "--host", "127.0.0.1", "--port", str(port)]


def serverapp_executor_command(control_port: int, ca: Path) -> list[str]:
    return [str(BIN / "flower-superexec"), "--runtime-api-address", f"127.0.0.1:{control_port}",
            "--root-certificates", str(ca)]


def clientapp_executor_command(supernode_port: int) -> list[str]:
    """The SuperNode's Runtime API stays on its own host (loopback or the compose network)."""
    return [str(BIN / "flower-superexec"), "--runtime-api-address",
            f"127.0.0.1:{supernode_port}", "--insecure"]


def write_topics(path: Path, rows: int, topics: list[str], seed: int) -> Path:
    rng = random.Random(seed)
    lines = ["label,text"]
    for i in range(rows):
        label = topics[i % len(topics)]
        lines.append(f"{label},{' '.join(rng.choice(TOPICS[label].split()) for _ in range(8))}")
    path.write_text("\n".join(lines) + "\n")
    return path


def flags(command: list[str]) -> dict[str, str | None]:
    """--flag -> its value (None for a switch)."""
    result, i = {}, 0
    while i < len(command):
        if command[i].startswith("--"):
            value = command[i + 1] if i + 1 < len(command) and not command[i + 1].startswith("--") else None
            result[command[i]] = value
            i += 2 if value is not None else 1
        else:
            i += 1
    return result


def wait_for_port(port: int, seconds: float = 60) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listens on port {port}")


@dataclass
class Loopback:
    folder: Path
    certs: Path
    env: dict
    started: Started
    fleet_port: int

    def start_client(self, index: int, node_config: dict[str, str]) -> None:
        """A registered SuperNode and the SuperExec that runs its ClientApps."""
        port = free_port()
        self.started.start(f"node-{index}", supernode_command(
            self.certs / "ca.crt", self.fleet_port, self.certs / f"node-{index}",
            node_config, port))
        wait_for_port(port)
        self.started.start(f"clientapp-{index}", clientapp_executor_command(port))

    def submit(self, run_config: str, timeout: float = 900) -> subprocess.CompletedProcess:
        return subprocess.run([str(BIN / "flwr"), "run", str(ROOT), "pollen", "--stream",
                               "--run-config", run_config],
                              env=self.env, capture_output=True, text=True, timeout=timeout)


@contextmanager
def loopback(folder: Path, keys: int = 3, registered: int = 2) -> Iterator[Loopback]:
    """A TLS SuperLink with SuperNode authentication on 127.0.0.1, ``keys`` node key pairs
    of which the first ``registered`` are registered; everything started is stopped after."""
    certs, home = folder / "certs", folder / "flwr-home"
    subprocess.run(["bash", str(CERTS_SCRIPT), "certs", str(certs), str(keys)], check=True,
                   capture_output=True)
    home.mkdir()
    fleet, control = free_port(), free_port()
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "pollen"\n\n[superlink.pollen]\n'
        f'address = "127.0.0.1:{control}"\nroot-certificates = "{certs / "ca.crt"}"\n')
    env = {**os.environ, **SUPEREXEC_ENV, "FLWR_HOME": str(home),
           "PATH": f"{BIN}:{os.environ['PATH']}"}
    started = Started(folder, env)
    try:
        started.start("superlink", superlink_command(certs, folder / "state.db", fleet, control))
        wait_for_port(control)
        wait_for_port(fleet)
        started.start("serverapp", serverapp_executor_command(control, certs / "ca.crt"))
        subprocess.run(["bash", str(CERTS_SCRIPT), "register", "pollen",
                        *[str(certs / f"node-{i}.pub") for i in range(1, registered + 1)]],
                       check=True, capture_output=True, env=env, timeout=60)
        yield Loopback(folder, certs, env, started, fleet)
    finally:
        started.stop_all()
