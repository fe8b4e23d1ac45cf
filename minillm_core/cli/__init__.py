"""The `minillm` command line: headless twins of the dashboard's screens, one module per command group.

Every command takes options generated from the config dataclasses, shows progress on stderr, and with `--json`
prints one JSON object on stdout.
"""

from minillm_core.cli import ab, evaluate, export, prune, recover, sweep  # noqa: F401  (registration of the commands)
from minillm_core.cli.app import app, main

__all__ = ["app", "main"]
