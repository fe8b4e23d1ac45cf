"""`python -m minillm_core.cli ...`: the `minillm` command without its console script (same code path).

Used where only the interpreter is known, e.g. a test that runs the CLI in a subprocess.
"""

from minillm_core.cli import main

main()
