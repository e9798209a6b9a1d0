import tomllib
from pathlib import Path

import pytest

from pollen.config import ConfigError, RunConfig

ROOT = Path(__file__).resolve().parents[1]


def test_pyproject_defaults_equal_config_defaults():
    app_config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    assert app_config == RunConfig().to_mapping()


def test_readme_documents_every_key():
    readme = (ROOT / "README.md").read_text()
    missing = [key for key in RunConfig.keys() if f"`{key}`" not in readme]
    assert not missing


def test_ints_are_accepted_for_floats_and_round_trip():
    config = RunConfig.from_mapping({"lr": 1, "num-server-rounds": 3, "server-round": 7})
    assert config.lr == 1.0 and isinstance(config.lr, float)
    assert RunConfig.from_mapping(config.to_mapping()) == config


@pytest.mark.parametrize("key, value, message", [
    ("num-server-rounds", "3", "must be of type int"),
    ("num-server-rounds", 2.5, "must be of type int"),
    ("lr", "fast", "must be of type float"),
    ("lr", True, "must be of type float"),
    ("model", 3, "must be of type str"),
    ("learning-rate", 0.1, "unknown run-config key 'learning-rate'"),
    ("model", "gpt-9", "unknown model 'gpt-9'"),
    ("dataset", "mnist", "unknown dataset 'mnist'"),
    ("partitioner", "shards", "unknown partitioner 'shards'"),
    ("device", "tpu", "unknown device 'tpu'"),
    ("fraction-train", 0.0, "fraction-train must be in (0, 1]"),
    ("server-test-fraction", 1.0, "server-test-fraction must be in (0, 1)"),
    ("num-server-rounds", 0, "num-server-rounds must be >= 1"),
    ("lora-r", 0, "lora-r must be >= 1"),
    ("fedprox-mu", -0.1, "fedprox-mu must be >= 0"),
    ("lora-target-modules", " , ", "names no module"),
    ("run-name", "a/b", "plain folder name"),
])
def test_bad_values_name_the_problem(key, value, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")
                       .replace("[", r"\[").replace("]", r"\]")):
        RunConfig.from_mapping({key: value})


def test_server_files_are_checked_on_the_server_only(tmp_path):
    """A deployment client validates the config it is sent without the server's files."""
    config = RunConfig.from_mapping({"dataset": "/server/only/data.csv",
                                     "server-data-fraction": 0.1,
                                     "server-data": "/server/only/curated.csv",
                                     "registry-root-certificates": "/server/only/ca.crt"})
    with pytest.raises(ConfigError, match="dataset file not found: /server/only/data.csv"):
        config.check_server_files()
    data = tmp_path / "data.csv"
    data.write_text("label,text\na,x\nb,y\n")
    with pytest.raises(ConfigError, match="server-data file not found"):
        config.replace(dataset=str(data)).check_server_files()
    with pytest.raises(ConfigError, match="registry-root-certificates not found"):
        config.replace(dataset=str(data), server_data=str(data)).check_server_files()
    with pytest.raises(ConfigError, match="not a Pollen run folder"):
        RunConfig(resume=str(tmp_path / "nowhere")).check_server_files()


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    command = next(line for line in ci_lines if "pytest" in line)
    assert command in readme
