"""Loopback deployment with TLS and SuperNode authentication, and the compose file's drift.

The SuperLink, the ServerApp's SuperExec, two SuperNodes (registered keys, each reading its
own data file) with their ClientApps' SuperExecs, and `flwr run` are real processes on
127.0.0.1, in the compose file's topology; every process the test starts is stopped by PID
with its descendants, also when the test fails.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from tests.deployment import (
    NODE_CONFIG_KEYS,
    ROOT,
    SUPEREXEC_ENV,
    clientapp_executor_command,
    flags,
    free_port,
    loopback,
    serverapp_executor_command,
    superlink_command,
    supernode_command,
    write_topics,
)

TINY_JOB = ("model='tiny-bert' lr=0.05 local-epochs=1 max-seq-len=16 num-server-rounds=1 "
            "min-clients=2")


@pytest.mark.slow
@pytest.mark.deploy
def test_loopback_deployment_runs_and_refuses_strangers(tmp_path):
    with loopback(tmp_path) as link:
        write_topics(tmp_path / "server.csv", 120, ["sport", "money", "space", "music"], seed=1)
        for i, (name, topics) in enumerate((("alice", ["sport", "money", "space"]),
                                            ("bob", ["money", "space", "music"])), start=1):
            data = write_topics(tmp_path / f"{name}.csv", 80, topics, seed=i + 1)
            link.start_client(i, {"client-id": name, "data-path": str(data),
                                  "model": "tiny-bert", "device": "cpu"})
        run = link.submit(f"{TINY_JOB} dataset='{tmp_path / 'server.csv'}' "
                          f"output-dir='{tmp_path / 'runs'}' run-name='loopback'")
        assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
        _check_outputs(tmp_path, run)
        _check_strangers_are_refused(link)


def _check_outputs(tmp_path, run):
    run_dir = tmp_path / "runs" / "loopback"
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1]
    assert all(r["num_replies"] == 2 and r["num_failures"] == 0 for r in rows)
    # Every message runs in a fresh ClientApp process, which reports what it cost.
    assert all(r["startup_seconds"] > 0.5 and r["import_seconds"] > 0.5 for r in rows)
    assert all(0 < r["train_phase_seconds"] < r["round_seconds"] for r in rows)
    assert (run_dir / "model" / "adapter_model.safetensors").is_file()
    assert "2 clients: alice" in run.stdout + run.stderr


def _check_strangers_are_refused(link):
    # A SuperNode whose key was never registered is refused ...
    stranger = link.started.start("stranger", supernode_command(
        link.certs / "ca.crt", link.fleet_port, link.certs / "node-3",
        {"client-id": "eve", "data-path": str(link.folder / "bob.csv")}, free_port())
        + ["--max-retries", "2", "--max-wait-time", "5"])
    assert stranger.wait(timeout=120) != 0
    assert "Failed to activate SuperNode" in link.started.log("stranger")
    # ... and one without the deployment's CA cannot even connect.
    no_ca = link.started.start("no-ca", supernode_command(
        None, link.fleet_port, None,
        {"client-id": "mallory", "data-path": str(link.folder / "bob.csv")}, free_port())
        + ["--max-retries", "2", "--max-wait-time", "5"])
    assert no_ca.wait(timeout=120) != 0
    assert "CERTIFICATE_VERIFY_FAILED" in link.started.log("no-ca")


@pytest.mark.slow
@pytest.mark.deploy
def test_a_client_with_bad_node_config_answers_with_an_error(tmp_path):
    """In-process check of the node-config errors a deployed client reports."""
    from client_app.app import app as client_app
    from pollen.config import RunConfig
    from server_app.app import run
    from strategies.directory import ClientSetupError
    from tests.localgrid import LocalGrid

    server = write_topics(tmp_path / "server.csv", 60, ["sport", "money"], seed=1)
    good = write_topics(tmp_path / "good.csv", 40, ["sport", "money"], seed=2)
    strange = write_topics(tmp_path / "strange.csv", 40, ["sport", "music"], seed=3)
    config = RunConfig(model="tiny-bert", dataset=str(server), num_server_rounds=1,
                       output_dir=str(tmp_path / "runs"), max_seq_len=16)
    cases = [({"data-path": str(good)}, "needs a client-id"),
             ({"client-id": "a", "data-path": str(tmp_path / "absent.csv")}, "absent.csv"),
             ({"client-id": "a", "data-path": str(strange)}, "labels ['music']"),
             ({"client-id": "a", "data-path": str(good), "model": "minilm"}, "model 'minilm'"),
             ({"client-id": "a", "data-path": str(good), "device": "tpu"}, "unknown device")]
    for node_config, message in cases:
        with pytest.raises(ClientSetupError, match=message.replace("[", r"\[").replace("]", r"\]")):
            run(LocalGrid(client_app, {7: node_config}), config)
    outputs = run(LocalGrid(client_app, {7: {"client-id": "a", "data-path": str(good)},
                                         9: {"client-id": "b", "data-path": str(good)}}),
                  config.replace(run_name="ok"))
    assert outputs.read_metrics()[0]["num_replies"] == 2


def compose_defaults(path: Path) -> dict:
    """The compose file as Compose reads it with none of its variables set: every
    ``${NAME:-default}`` (or ``${NAME-default}``) replaced by its default."""
    text = re.sub(r"\$\{\w+:?-([^}]*)\}", r"\1", path.read_text())
    assert "${" not in text, "a variable without a default"
    return yaml.safe_load(text)


def test_compose_file_uses_the_loopback_commands():
    compose = compose_defaults(ROOT / "deploy" / "docker-compose.yml")
    gpu = compose_defaults(ROOT / "deploy" / "docker-compose.gpu.yml")
    services = compose["services"]
    tested_link = flags(superlink_command(Path("/c"), Path("/s/state.db"), 9092, 9093))
    link = flags(services["superlink"]["command"])
    assert link.keys() == tested_link.keys()
    assert link["--isolation"] == tested_link["--isolation"] == "process"
    serverapp = flags(services["serverapp"]["command"])
    assert serverapp.keys() == flags(serverapp_executor_command(9093, Path("/c/ca.crt"))).keys()
    assert serverapp["--runtime-api-address"] == f"superlink:{link['--port']}"
    for flag in ("--ssl-ca-certfile", "--ssl-certfile", "--ssl-keyfile"):
        assert Path(link[flag]).name == Path(tested_link[flag]).name
        assert link[flag].startswith("/app/certificates/")
    assert "./certs:/app/certificates:ro" in services["superlink"]["volumes"]
    assert "superlink-state:/app/state" in services["superlink"]["volumes"]
    assert link["--database"].startswith("/app/state/")
    published = {p.split(":")[-1] for p in services["superlink"]["ports"]}
    assert published == {link["--fleet-api-address"].split(":")[-1], link["--port"]}

    tested_node = flags(supernode_command(Path("/c/ca.crt"), 9092, Path("/k"),
                                          dict.fromkeys(NODE_CONFIG_KEYS, "x"), 9094))
    for name in ("supernode-1", "supernode-2"):
        node = flags(services[name]["command"])
        assert node.keys() == tested_node.keys()
        assert node["--superlink"] == "superlink:9092"
        keys = [item.split("=")[0] for item in node["--node-config"].split()]
        assert tuple(keys) == NODE_CONFIG_KEYS
        mounts = " ".join(services[name]["volumes"])
        assert node["--root-certificates"] in mounts
        assert node["--auth-supernode-private-key"] in mounts
        assert node["--isolation"] == tested_node["--isolation"]
        app = services[name.replace("supernode", "clientapp")]
        assert flags(app["command"]).keys() == flags(clientapp_executor_command(9094)).keys()
        assert flags(app["command"])["--runtime-api-address"] == f"{name}:{node['--port']}"
        data_path = dict(item.split("=") for item in node["--node-config"].split())["data-path"]
        index = name.rsplit("-", 1)[1]
        assert app["volumes"] == [f"./data/node-{index}:/app/data:ro"]
        assert data_path.strip("'").startswith("/app/data/")
        assert "deploy" not in app  # CPU by default; the GPU overlay reserves one
        assert SUPEREXEC_ENV.items() <= app["environment"].items()
        reserved = gpu["services"][f"clientapp-{index}"]["deploy"]["resources"]["reservations"]
        assert reserved["devices"][0]["capabilities"] == ["gpu"]
        assert node["--auth-supernode-private-key"] == f"/app/keys/node-{index}"
    assert "pollen-runs:/app/pollen-runs" in services["serverapp"]["volumes"]
    assert SUPEREXEC_ENV.items() <= services["serverapp"]["environment"].items()
    assert set(compose["volumes"]) == {"superlink-state", "pollen-runs", "registry-store"}

    # The adapter registry: the command tests/test_registry.py's loopback checks run,
    # the deployment's certificate and token, and the submitted job publishing to it.
    registry = services["registry"]
    assert registry["entrypoint"] == ["pollen"]
    serve_args = flags(registry["command"][2:])
    port = serve_args["--address"].rsplit(":", 1)[1]
    assert {p.split(":")[-1] for p in registry["ports"]} == {port}
    for flag in ("--certfile", "--keyfile", "--token-file"):
        assert serve_args[flag].startswith("/app/certificates/")
    assert "./certs:/app/certificates:ro" in registry["volumes"]
    token_file = services["serverapp"]["environment"]["POLLEN_REGISTRY_TOKEN_FILE"]
    assert token_file == serve_args["--token-file"]
    assert any(v.endswith(f":{token_file}:ro") for v in services["serverapp"]["volumes"])
    job = services["submit"]["command"][-1]
    assert f"registry-address='registry:{port}'" in job
    assert "registry-root-certificates='/app/certificates/ca.crt'" in job
