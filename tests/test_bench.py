"""The benchmark suites' quick modes: each writes its table and its plot (a smoke test of
the suites; it asserts what they produce, not how fast anything is)."""

import pytest

from bench.__main__ import SUITES, main
from server_app.rounds import reproducible

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


def test_llm_report_states_each_rows_place_against_its_baseline_by_the_one_std_rule(tmp_path):
    import json

    from bench.common import gap_and_larger_std
    from bench.llm import federated

    gap, larger_std = gap_and_larger_std([0.8, 0.9, 1.0], [0.5, 0.6, 0.4])
    assert (round(gap, 6), round(larger_std, 6)) == (0.4, 0.1)

    def cell(match: float, own: float | None = None) -> dict:
        cell = {"final": [match, 1.0 - match], "curve": [match] * 5,
                "cost": [3.5, 100.0, 400.0, 110.0]}
        return cell if own is None else {**cell, "on_clients": [own, 0.2]}

    finals = {"fedavg": [0.80, 0.55, 0.80], "fedprox": [0.79, 0.56, 0.80],
              "central": [0.20, 0.10, 0.15], "guided": [0.99, 0.98, 0.97]}
    cells = {f"{seed}/{run}": cell(values[seed], 0.7 if run == "fedavg" else None)
             for run, values in finals.items() for seed in range(3)}
    cells.update({f"{seed}/fedmerge": cell(0.7, 0.9) for seed in range(3)})
    cells["0/heterotune"] = cell(0.1)
    (tmp_path / "llm-cells-r5-s10.json").write_text(json.dumps(cells))

    report = federated(False, [0, 1, 2], 5, 10, tmp_path, runs=()).read_text()
    rows = {line.split(" | ")[0][2:]: line for line in report.splitlines()
            if line.startswith("| ") and " | fedavg | " in line}
    assert rows["fedprox"].endswith("| level (within one std) | -0.010, +0.010, +0.000 |")
    assert rows["central"].startswith("| central | fedavg | -0.567 | 0.144 | a loss |")
    assert rows["guided"].startswith("| guided | fedavg | +0.263 | 0.144 | a win |")
    assert "fedmerge" in rows and "heterotune" not in rows  # one seed of three: no place
    assert "| heterotune | 1 of 3 seeds run so far | 0: 0.100 |" in report
    assert "FedMerge's merges - FedAvg's global model there: +0.200" in report
    assert "there: +0.200 (the larger std 0.000: a win)." in report


def test_a_bench_run_killed_after_a_checkpoint_resumes_to_an_unbroken_runs_rows(
        tmp_path, monkeypatch):
    """``run_in_process`` on a name whose newest run was killed (SIGKILL) after round 2's
    checkpoint resumes that folder, and its rows equal those of a run never stopped; a
    finished run is not resumed: the next call starts a new folder."""
    import json
    import subprocess
    import sys
    import time

    import bench.common
    from server_app.checkpoints import latest_checkpoint

    monkeypatch.setattr(bench.common, "RUNS", tmp_path)
    keys = {"num-server-rounds": 6}
    killed = tmp_path / "cell-20260101-000000"
    victim = subprocess.Popen(
        [sys.executable, "-m", "tests.serve_local",
         json.dumps({**keys, "output-dir": str(tmp_path), "run-name": killed.name})],
        cwd=bench.common.ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while not (killed / "checkpoints" / "round-2").is_dir():
            assert victim.poll() is None and time.time() < deadline, "no checkpoint appeared"
            time.sleep(0.01)
        victim.kill()
    finally:
        victim.wait(timeout=60)
    assert not (killed / "summary.json").exists(), "the run finished before the kill"
    kept = latest_checkpoint(killed).server_round

    run_dir, rows, seconds = bench.common.run_in_process(keys, 4, "cell")
    _, unbroken, _ = bench.common.run_in_process(keys, 4, "unbroken")

    def untimed(rows):
        return [reproducible(r) for r in rows]

    assert run_dir == killed and [r["round"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert untimed(rows) == untimed(unbroken)
    assert 1 <= kept < 6
    # the resumed part's wall time covers only its own rounds; the kept ones are added
    assert seconds >= sum(r["round_seconds"] for r in rows)
    again = bench.common.run_in_process({"num-server-rounds": 1}, 4, "cell")[0]
    assert again != killed and again.name.startswith("cell-")


def test_llm_rounds_report_gives_each_seeds_ratios_from_its_phases(tmp_path):
    """Hand-made phases: evaluation / training, guided / fedavg in round seconds, per
    training second and in peak memory, and guided's exact match against section 9's."""
    import json

    from bench.llm_rounds import rounds

    def cell(train: float, aggregate: float, server_eval: float, peak: float,
             match: float) -> dict:
        one = {"seconds": {"train": train, "aggregate": aggregate, "evaluate": 0.0,
                           "server_eval": server_eval},
               "round_seconds": train + aggregate + server_eval,
               "client_train_seconds_sum": train,
               "peak_memory_mb": {"train": peak, "aggregate": peak / 2, "evaluate": 1.0,
                                  "server_eval": 1.0},
               "search_steps": 8 if aggregate else None,
               "search_seconds": aggregate if aggregate else None}
        return {"commit": "test", "exact_match": match, "seconds": 0.0, "rounds": [one] * 2}

    cells = {"0/fedavg": cell(100.0, 0.0, 20.0, 1000.0, 0.80),
             "0/guided": cell(200.0, 60.0, 40.0, 1100.0, 0.81),
             "1/fedavg": cell(100.0, 0.0, 10.0, 1000.0, 0.60),
             "1/guided": cell(100.0, 30.0, 10.0, 1200.0, 0.79)}
    (tmp_path / "llm-rounds-cells.json").write_text(json.dumps(cells))
    report = rounds(False, [0, 1], [], tmp_path).read_text()
    # seed 0: guided's 300 s rounds over fedavg's 120 s, and per training second
    # (300 / 200) / (120 / 100) = 1.25; seed 1: 140 / 110 and 1.4 / 1.1
    assert "| 0 | 0.200 | 0.200 | 2.50 | 1.25 | 1.10 | 0.800 | 0.810 | - |" in report
    assert "| 1 | 0.100 | 0.100 | 1.27 | 1.27 | 1.20 | 0.600 | 0.790 | - |" in report
    assert "Evaluation / training, fedavg: 0.150 +- 0.071 (bound 0.25x: met" in report
    assert "guided's exact match 0.800 +- 0.014 against section 9's 0.811" in report
    assert report.rstrip().endswith("within one std")
