#!/bin/sh
# Guest "test" idle (vhs.run=idle): keep the guest up (e.g. for QMP screendump/input demos).
# Prints VHS-IDLE once, then sleeps until QEMU is stopped from the host.
echo "VHS-IDLE"
while :; do sleep 3600; done
