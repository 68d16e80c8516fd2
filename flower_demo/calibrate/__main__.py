"""python -m flower_demo.calibrate: see the package's docstring."""

import sys

from flower_demo.calibrate.cli import main

sys.exit(main())
