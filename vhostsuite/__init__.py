"""vhostsuite: vhost-user device back-ends (rng, input, gpu) in Python with a Cython ring core."""

import os

__version__ = "0.1.0"

#: VHOSTSUITE_NO_EXTENSIONS=1: run the pure-Python twins even where the compiled ones are built
#: (read here once; setup.py reads it too and then builds none).
NO_EXTENSIONS = bool(os.environ.get("VHOSTSUITE_NO_EXTENSIONS"))
