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
