#!/bin/sh
# Guest side of `make demo` (vhs.run=demo): every device in turn.
#   rng:   read /dev/hwrng (rng.sh)
#   gpu:   gpu-draw in the background (it holds its frame until poweroff)
#   input: input-test reads the events the host sends (kernel cmdline vhs.input_events=N)
echo "DEMO-RNG"
sh /tests/rng.sh
echo "DEMO-RNG-RC=$?"
echo "DEMO-GPU"
/bin/gpu-draw &
echo "DEMO-INPUT"
/bin/input-test
echo "DEMO-INPUT-RC=$?"
exit 0
