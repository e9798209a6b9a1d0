"""`pollen check`, the edge machine's smoke command (docs: README "Edge clients")."""

from __future__ import annotations

import pytest
import torch

from pollen.cli import main


def test_check_trains_lora_steps_on_the_cpu(capsys):
    main(["check", "--device", "cpu", "--model", "tiny-bert", "--steps", "3",
          "--batch-size", "4"])
    out = capsys.readouterr().out
    assert "device cpu (CPU)" in out
    assert "3 steps of 4 in" in out and "samples/s" in out and "loss " in out


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_check_on_cuda_without_cuda_names_the_problem():
    with pytest.raises(SystemExit, match="device=cuda was requested but torch sees no CUDA"):
        main(["check", "--device", "cuda", "--steps", "1"])


def test_a_node_caps_torchs_threads_or_names_a_bad_value():
    from pollen.config import ConfigError
    from pollen.device import limit_cpu_threads

    before = torch.get_num_threads()
    try:
        limit_cpu_threads("1")
        assert torch.get_num_threads() == 1
        limit_cpu_threads(None)  # not given: unchanged
        assert torch.get_num_threads() == 1
        for bad in ("0", "two", "-3"):
            with pytest.raises(ConfigError, match="node config threads"):
                limit_cpu_threads(bad)
    finally:
        torch.set_num_threads(before)
