#!/bin/sh
# Guest test "rng" (vhs.run=rng): read two blocks from the virtio hw_random device.
# Prints RNG_CURRENT=<rng>, RNG_<X>_BYTES=<n>, RNG_<X>_SHA256=<hex>, RNG_<X>=<hex data> for X in A B.
. /tests/rng-common.sh
wait_virtio_rng || exit 1
for x in A B; do
    if ! timeout 60 dd if=/dev/hwrng of=/tmp/rng_$x bs=4096 count=1 iflag=fullblock 2>/tmp/dd_err; then
        echo "RNG_ERROR: reading /dev/hwrng failed: $(cat /tmp/dd_err)"
        exit 1
    fi
    echo "RNG_${x}_BYTES=$(wc -c < /tmp/rng_$x)"
    echo "RNG_${x}_SHA256=$(sha256sum /tmp/rng_$x | cut -d' ' -f1)"
    echo "RNG_$x=$(od -An -v -tx1 /tmp/rng_$x | tr -d ' \n')"
done
exit 0
