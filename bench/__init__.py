"""Long measurements; each module is one suite, run as ``python -m bench.<suite>``."""
