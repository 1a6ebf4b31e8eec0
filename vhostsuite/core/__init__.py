"""The vhost-user core: the wire protocol, guest memory, the split rings (Cython and pure
twins), the connection to one front-end, the event loop, and the contract devices implement.
It knows no device; devices know none of it but :mod:`.device`."""
