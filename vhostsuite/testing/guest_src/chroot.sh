#!/bin/sh
# Run /vhs/run inside the Debian root the host shares over virtio-9p (mount tag "vhsroot"),
# with this guest's /dev, /proc, /sys and /tmp; its status is this test's.
mkdir -p /mnt/root
if ! mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 vhsroot /mnt/root; then
    echo "VHS-ERROR no 9p root shared as vhsroot"
    exit 2
fi
for d in dev proc sys tmp; do
    mount -o bind "/$d" "/mnt/root/$d"
done
mount -t devpts devpts /mnt/root/dev/pts 2>/dev/null
chroot /mnt/root /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 /vhs/run
rc=$?
sync
exit $rc
