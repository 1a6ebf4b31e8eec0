"""The devices: one module each, plain Python on the :class:`~vhostsuite.device.Device` contract."""
