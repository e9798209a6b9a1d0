"""Run the server app in a process of its own, with the in-process grid and 4 clients.

    python -m tests.serve_local '<run config as JSON>'

The kill-and-resume tests start this, kill it with SIGKILL, and start it again.
"""

import json
import sys

from client_app.app import app as client_app
from server_app.app import run
from strategies import run_config
from tests.localgrid import LocalGrid

if __name__ == "__main__":
    run(LocalGrid.simulation(client_app, 4), run_config(json.loads(sys.argv[1])))
