"""vhostsuite: vhost-user device back-ends (rng, input, gpu) in Python with a Cython ring core."""

__version__ = "0.1.0"
