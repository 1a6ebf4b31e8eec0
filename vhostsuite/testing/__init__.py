"""Test helpers for vhostsuite (guest kit for end-to-end tests under QEMU)."""
