"""`python -m flower_demo.train`: the command line (cli.py)."""

import sys

from flower_demo.train.cli import main

sys.exit(main())
