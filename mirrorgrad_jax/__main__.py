"""``python -m mirrorgrad_jax`` is the ``mirrorgrad`` command."""

import sys

from mirrorgrad_jax.cli import main

sys.exit(main())
