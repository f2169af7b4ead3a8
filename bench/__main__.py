"""``python -m bench``: the side-by-side benchmark (see :mod:`bench.run`)."""

from __future__ import annotations

import sys

from bench.run import main

sys.exit(main())
