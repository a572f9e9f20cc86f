"""``python -m studio_core``: the engine's command line (see ``studio_core/cli.py``)."""

import sys

from studio_core.cli import main

sys.exit(main())
