"""The benchmark suites' quick modes: each writes its table and its plot (a smoke test of
the suites; it asserts what they produce, not how fast anything is)."""

import pytest

from bench.__main__ import SUITES, main

pytestmark = pytest.mark.slow  # each quick suite runs for 20 s to 2 min

EXPECTED_ROWS = {
    "accuracy": ["| fedavg |", "| fedprox |", "| fedref |", "| fedmerge |", "| guided |",
                 "| central |", "| mosaic |", "| fedavg-per-family |",
                 "| heterotune | n/a", "| hetlora | n/a"],
    "communication": ["full fine-tuning", "LoRA", "DeMA", "| int8 |", "| bfloat16 |"],
    "server-overhead": ["| 10 | fedavg |", "| 100 | mosaic |", "| 100 | heterotune |",
                        "| full model |"],
    "scaling": ["| 4 |", "| 8 |"],
}


# The deployment suite's quick mode (2 simulations and 2 loopback deployments of one round)
# starts the same loopback deployment that tests/test_deployment.py runs and checks; it is
# left out to keep the suite under 15 min.
LEFT_OUT = {"deployment"}


def test_every_other_suite_is_run():
    assert set(EXPECTED_ROWS) == set(SUITES) - LEFT_OUT


@pytest.mark.parametrize("suite", list(EXPECTED_ROWS))
def test_quick_suite_writes_its_table_and_plot(suite, tmp_path):
    report = main([suite, "--quick", "--out", str(tmp_path)])
    assert report == tmp_path / f"{suite}-quick.md"
    text = report.read_text()
    assert f"python -m bench {suite} --quick" in text
    for row in EXPECTED_ROWS[suite]:
        assert row in text, f"{suite}: no '{row}' in\n{text}"
    assert (tmp_path / f"{suite}-quick.png").stat().st_size > 1000


def test_cells_are_computed_once_and_resumed_from_their_file(tmp_path):
    from bench.common import Cells, mean_std

    calls = []
    first = Cells(tmp_path / "cells.json")
    assert first.get(0, "fedavg", lambda: calls.append(1) or {"final": 0.5}) == {"final": 0.5}
    first.get(0, "fedavg", lambda: calls.append(1) or {"final": 9.0})
    resumed = Cells(tmp_path / "cells.json")
    assert resumed.get(0, "fedavg", lambda: calls.append(1) or {"final": 9.0}) == {"final": 0.5}
    assert calls == [1]
    assert resumed.of("fedavg", [0, 1]) == [{"final": 0.5}]  # seed 1 not run yet
    assert mean_std([0.7, 0.9]) == "0.800 +- 0.141"


def test_llm_bench_scores_each_clients_own_fedmerge_merge_as_the_clients_do(topics_csv,
                                                                           tmp_path):
    """``bench.llm.on_clients`` re-scores a finished run from its saved adapters; on a
    FedMerge run whose clients evaluated their own merges in the last round it must give
    their per-client mean exactly (and their examples-weighted loss); the uniform merge
    (the final model) scores otherwise."""
    from bench.llm import on_clients
    from client_app.app import app as client_app
    from server_app.app import run
    from strategies import run_config
    from tests.localgrid import LocalGrid
    from tests.test_instruct import TINY_LLM

    config = run_config({**TINY_LLM, "dataset": str(topics_csv), "strategy": "fedmerge",
                         "num-server-rounds": 2, "max-steps": 4, "lr": 0.05,
                         "local-test-fraction": 0.3, "output-dir": str(tmp_path),
                         "run-name": "fedmerge"})
    outputs = run(LocalGrid.simulation(client_app, 3), config)
    last = outputs.read_metrics()[-1]
    match, loss = on_clients(config, outputs.run_dir, 3, personal=True)
    assert match == pytest.approx(last["client_accuracy_per_client_mean"])
    assert loss == pytest.approx(last["client_loss"], rel=1e-5)
    assert sorted(p.name for p in (outputs.run_dir / "adapters" / "clients").iterdir()) == \
        ["0", "1", "2"]
    uniform_loss = on_clients(config, outputs.run_dir, 3, personal=False)[1]
    assert abs(uniform_loss - loss) > 1e-4  # the clients' merges are not the uniform one
