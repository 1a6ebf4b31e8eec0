"""Test tooling, never imported by the programs: the front-end (QEMU's side of vhost-user), the
GPU display peer and guest driver, the spawner of back-end programs, the driver-side ring over
test memory, the guest kit that boots Linux under QEMU, and the demo."""
