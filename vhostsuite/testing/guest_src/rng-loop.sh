#!/bin/sh
# Guest test "rng-loop" (vhs.run=rng-loop): read vhs.rng_blocks=N blocks of 64 bytes from the
# virtio hw_random device, one every 0.5 s, for a back-end restarted while the guest reads.
# Prints RNG_CURRENT=<rng>, then RNG_BLOCK <i> <hex data> as each block arrives.
n=$(sed -n 's/.*vhs\.rng_blocks=\([0-9]*\).*/\1/p' /proc/cmdline)
n=${n:-10}
. /tests/rng-common.sh
wait_virtio_rng || exit 1
i=1
while [ $i -le "$n" ]; do
    if ! dd if=/dev/hwrng of=/tmp/block bs=64 count=1 iflag=fullblock 2>/tmp/dd_err; then
        echo "RNG_ERROR: reading /dev/hwrng failed: $(cat /tmp/dd_err)"
        exit 1
    fi
    echo "RNG_BLOCK $i $(od -An -v -tx1 /tmp/block | tr -d ' \n')"
    i=$((i + 1))
    sleep 0.5
done
exit 0
