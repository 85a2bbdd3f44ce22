"""Run the genkit command line with ``python -m genkit``."""

import sys

from genkit.cli import main

sys.exit(main())
