"""``python -m medslm.samples``: (re)write data/samples/; a bad fact table is one error line, exit 2."""

import sys

from medslm.cli import run_cli
from medslm.samples import main

raise SystemExit(run_cli(lambda: main(sys.argv[1:])))
