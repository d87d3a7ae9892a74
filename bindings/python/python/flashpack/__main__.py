"""``python -m flashpack``: the ``flashpack`` command."""

import sys

from .cli import main

sys.exit(main())
