import json
import tomllib
from pathlib import Path

import pytest
from flwr.common.config import flatten_dict, fuse_dicts, parse_config_args

from pollen.config import ConfigError, RunConfig
from strategies import METHODS, SECTIONS, default_run_config, run_config, run_config_keys

ROOT = Path(__file__).resolve().parents[1]


def pyproject_run_config() -> dict:
    """``[tool.flwr.app.config]`` flattened as Flower flattens it (sub-tables with dots)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return flatten_dict(project["tool"]["flwr"]["app"]["config"])


def test_pyproject_declares_exactly_the_dataclass_keys_and_defaults():
    assert pyproject_run_config() == default_run_config()
    assert sorted(default_run_config()) == sorted(run_config_keys())


def test_method_keys_live_in_their_method_s_section_only():
    shared = set(RunConfig.keys())
    for name, section in SECTIONS.items():
        assert name in METHODS
        assert all(key.startswith(f"{name}.") for key in section.keys())
    assert not any("." in key for key in shared)


def test_readme_documents_every_key_with_its_default():
    """Each key has a README row ``| `key` | `default` |``."""
    readme = (ROOT / "README.md").read_text()

    def shown(value) -> str:
        if isinstance(value, bool):
            return str(value).lower()
        return '""' if value == "" else str(value)

    missing = [key for key, default in default_run_config().items()
               if f"| `{key}` | `{shown(default)}` |" not in readme]
    assert not missing


def test_nested_keys_work_through_flower_s_run_config_parsing():
    """What `flwr run --run-config "fedmerge.lr-w=50 strategy='fedmerge'"` hands the app."""
    overrides = parse_config_args(["fedmerge.lr-w=50 strategy='fedmerge' guided.atlas-size=4"])
    config = run_config(fuse_dicts(pyproject_run_config(), overrides))
    assert config.strategy == "fedmerge" and config.method.lr_w == 50.0
    assert config.to_mapping()["fedmerge.lr-w"] == 50.0
    assert "guided.atlas-size" not in config.to_mapping()  # only the run's method travels


@pytest.mark.parametrize("old, new", [
    (old, f"{name}.{own}") for name, section in SECTIONS.items()
    for old, own in section.renamed.items()])
def test_old_flat_names_give_an_error_naming_the_new_key(old, new):
    with pytest.raises(ConfigError, match=f"'{old}' is now '{new}'"):
        run_config({old: SECTIONS[new.split(".")[0]]().to_mapping()[new]})


def test_a_section_value_is_checked_even_when_another_method_runs():
    with pytest.raises(ConfigError, match=r"mosaic.temperature must be > 0"):
        run_config({"strategy": "fedavg", "mosaic.temperature": 0.0})
    with pytest.raises(ConfigError, match="names no method's section"):
        run_config({"fedsgd.lr": 0.1})


def test_ints_are_accepted_for_floats_and_round_trip():
    config = run_config({"lr": 1, "num-server-rounds": 3, "server-round": 7})
    assert config.lr == 1.0 and isinstance(config.lr, float)
    assert run_config(config.to_mapping()) == config


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
    ("fedprox.mu", -0.1, "fedprox.mu must be >= 0"),
    ("lora-target-modules", " , ", "names no module"),
    ("run-name", "a/b", "plain folder name"),
])
def test_bad_values_name_the_problem(key, value, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")
                       .replace("[", r"\[").replace("]", r"\]")):
        run_config({key: value})


def test_server_files_are_checked_on_the_server_only(tmp_path):
    """A deployment client validates the config it is sent without the server's files."""
    config = run_config({"dataset": "/server/only/data.csv",
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


def test_auto_keys_take_the_model_s_recommendation_and_say_so(tmp_path):
    from server_app.outputs import RunOutputs

    minilm = run_config({"model": "minilm", "output-dir": str(tmp_path), "run-name": "m"})
    assert (minilm.lr, minilm.batch_size) == (0.003, 32)
    assert run_config({}).lr == 0.01  # the digits CNN
    chosen = run_config({"model": "minilm", "lr": 0.01})
    assert chosen.lr == 0.01 and dict(chosen.recommended_by) == {
        "batch-size": "minilm", "lora-target-modules": "minilm"}
    with pytest.raises(ConfigError, match="lr must be > 0"):
        run_config({"lr": 0.0})
    sources = json.loads((RunOutputs.create(minilm).run_dir / "config-sources.json").read_text())
    assert sources["lr"] == "recommended for model 'minilm'"
    assert sources["model"] == "run config"
