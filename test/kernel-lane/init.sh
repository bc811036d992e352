#!/bin/busybox sh
# shaperr stock-kernel lane: load modules, make the host's root (read-only 9p) writable with an overlay,
# run the job from the "lane" share inside it, report its exit status, power off.
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $(cat /modules/order); do insmod /modules/$m 2>/dev/null; done
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000,cache=loose hostroot /lower || { echo "LANE-FAILED cannot mount the host root over 9p"; poweroff -f; }
mount -t tmpfs -o size=512m tmpfs /rw && mkdir -p /rw/upper /rw/work
# /tmp stays the host's (a project may live there, e.g. a CI clone); the overlay makes it writable.
if ! mount -t overlay overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work /newroot 2>/dev/null; then
  echo "LANE-NOTE overlay over 9p failed: read-only root with tmpfs on /run and /var/tmp"
  mount --bind /lower /newroot
  mount -t tmpfs tmpfs /newroot/var/tmp
fi
mount -t proc proc /newroot/proc
mount -t sysfs sys /newroot/sys
mount -t devtmpfs dev /newroot/dev
mkdir -p /newroot/dev/pts && mount -t devpts devpts /newroot/dev/pts
mount -t tmpfs tmpfs /newroot/run
mkdir -p /newroot/run/lane && mount -t 9p -o trans=virtio,version=9p2000.L lane /newroot/run/lane || { echo "LANE-FAILED cannot mount the job share"; poweroff -f; }
ip link set lo up 2>/dev/null
chroot /newroot /bin/sh /run/lane/job.sh
echo "LANE-EXIT $?"
sync
poweroff -f
