#!/bin/sh
# Sourced by the rng guest tests (not a test itself): wait_virtio_rng waits up to 10 s for the
# kernel to pick a hw_random device, prints RNG_CURRENT=<rng>, and fails (with RNG_ERROR) unless
# it is the virtio one.
wait_virtio_rng() {
    cur=none
    i=0
    while [ $i -lt 200 ]; do
        cur=$(cat /sys/class/misc/hw_random/rng_current 2>/dev/null)
        case "$cur" in "" | none) ;; *) break ;; esac
        sleep 0.05
        i=$((i + 1))
    done
    echo "RNG_CURRENT=$cur"
    case "$cur" in
        virtio_rng*) return 0 ;;
        *) echo "RNG_ERROR: current hw_random is '$cur', not virtio_rng"; return 1 ;;
    esac
}
