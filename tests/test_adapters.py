import numpy as np
import pytest
import torch

from pollen.adapters import LayoutError, load_travelling_state, save_final_model, travelling_state
from pollen.config import ConfigError, RunConfig
from pollen.models import build_backbone, build_model, build_tokenizer, minilm_dir


def test_minilm_lora_travels_adapters_and_head_only():
    model = build_model(RunConfig(model="minilm"), num_classes=4)
    state = travelling_state(model)
    assert sum(a.size for a in state.values()) == 75_268  # 6 layers x (q, v) x r=8, + head
    assert all("lora_" in name or "classifier" in name for name in state)
    assert sum(p.numel() for p in model.parameters()) > 22_000_000


@pytest.mark.parametrize("name, layers", [("minilm-l2", 2), ("minilm-l4", 4)])
def test_truncated_minilm_keeps_first_layers(name, layers):
    backbone = build_backbone(name, 4, seed=0)
    assert backbone.config.num_hidden_layers == layers
    full = build_backbone("minilm", 4, seed=0)
    first = "bert.encoder.layer.0.attention.self.query.weight"
    assert torch.equal(backbone.state_dict()[first], full.state_dict()[first])


def test_cnn_travels_every_weight():
    model = build_model(RunConfig(), 10)
    assert set(travelling_state(model)) == set(model.state_dict())


def test_load_checks_names_and_shapes():
    model = build_model(RunConfig(model="tiny-bert"), 4)
    state = travelling_state(model)
    name = next(iter(state))
    with pytest.raises(LayoutError, match="missing 1 tensor"):
        load_travelling_state(model, {k: v for k, v in state.items() if k != name})
    with pytest.raises(LayoutError, match="has shape \\(1,\\)"):
        load_travelling_state(model, {**state, name: np.zeros(1, np.float32)})
    with pytest.raises(LayoutError, match="1 unexpected tensor"):
        load_travelling_state(model, {**state, "extra": np.zeros(1, np.float32)})


def test_load_overwrites_travelling_tensors():
    config = RunConfig(model="tiny-bert")
    source, target = build_model(config, 4), build_model(config, 4)
    shifted = {k: v + 0.5 for k, v in travelling_state(source).items()}
    load_travelling_state(target, shifted)
    for name, value in travelling_state(target).items():
        np.testing.assert_array_equal(value, shifted[name])


def test_unknown_target_module_is_a_config_error():
    with pytest.raises(ConfigError, match="lora-target-modules 'nonexistent'"):
        build_model(RunConfig(model="tiny-bert", lora_target_modules="nonexistent"), 4)


def test_saved_adapter_loads_with_peft(tmp_path):
    from peft import PeftModel

    config = RunConfig(model="minilm-l2")
    model = build_model(config, 4)
    load_travelling_state(model, {k: v + 0.01 for k, v in travelling_state(model).items()})
    save_final_model(model, tmp_path)
    assert (tmp_path / "adapter_config.json").is_file()
    assert (tmp_path / "adapter_model.safetensors").is_file()
    loaded = PeftModel.from_pretrained(build_backbone("minilm-l2", 4, seed=123), tmp_path)
    batch = build_tokenizer("minilm")(["a test sentence", "another one"], padding=True,
                                            return_tensors="pt")
    model.eval(), loaded.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).logits, model(**batch).logits)
    assert str(minilm_dir()) in (tmp_path / "adapter_config.json").read_text()
