#!/bin/bash
# Stand-in for NVIDIA's Linux_for_Tegra/flash.sh (R35/R36), used by
# tests/it/recipes.rs. It reproduces the files and flags the recipes rely on
# and flashes nothing; the "device" is the directory $L4T_STANDIN_DEVICE.
#
# - `--no-flash BOARD ROOTDEV`: builds bootloader/system.img.raw from
#   rootfs/ and the sparse bootloader/system.img from it, as create_fsimg
#   does. The rootfs UUID comes from bootloader/l4t-rootfs-uuid.txt,
#   generated when missing; extlinux.conf in the image gets
#   root=PARTUUID=<it>.
# - `-r`: "skip building and reuse existing system.img"; fails when it is
#   missing (sysfile_exist). Without -r, system.img is rebuilt from rootfs/.
# - flashing: the APP partition's contents (system.img unsparsed) go to
#   $L4T_STANDIN_DEVICE/APP.img, the partition's UUID (read from
#   l4t-rootfs-uuid.txt at flash time) to APP.partuuid.
# - L4T_STANDIN_FAIL=1 makes the flash fail after the image was read.
set -eo pipefail
cd "$(dirname "$0")"
reuse=0 no_flash=0
echo "$@" > "${L4T_STANDIN_LOG:-/dev/null}"
while [ $# -gt 2 ]; do
    case "$1" in
        -r) reuse=1 ;;
        --no-flash) no_flash=1 ;;
        --sign|--no-systemimg) ;;
        --external-device) ;;
        -c|-S) shift ;;
        *) echo "flash.sh stand-in: unknown option $1" >&2; exit 1 ;;
    esac
    shift
done
[ $# -eq 2 ] || { echo "Usage: flash.sh [options] <target_board> <rootdev>" >&2; exit 1; }
board=$1 rootdev=$2
[ -f "$board.conf" ] || { echo "Error: $board.conf is not found" >&2; exit 1; }
uuidfile=bootloader/l4t-rootfs-uuid.txt
if [ ! -f "$uuidfile" ]; then
    cat /proc/sys/kernel/random/uuid > "$uuidfile"
fi
uuid=$(cat "$uuidfile")
if [ "$reuse" = 1 ]; then
    [ -f bootloader/system.img ] || { echo "Error: bootloader/system.img not found" >&2; exit 1; }
else
    mkdir -p rootfs/boot/extlinux
    printf 'LABEL primary\n      LINUX /boot/Image\n      APPEND ${cbootargs} root=PARTUUID=%s rw rootwait\n' \
        "$uuid" > rootfs/boot/extlinux/extlinux.conf
    rm -f bootloader/system.img.raw
    mke2fs -q -t ext4 -d rootfs -E root_owner=0:0 bootloader/system.img.raw 32M
    img2simg bootloader/system.img.raw bootloader/system.img
fi
[ "$no_flash" = 1 ] && { echo "*** no-flash flag enabled. Exiting now... ***"; exit 0; }
device=${L4T_STANDIN_DEVICE:?}
mkdir -p "$device"
simg2img bootloader/system.img "$device/APP.img"
[ "${L4T_STANDIN_FAIL:-0}" = 1 ] && { echo "flash.sh stand-in: the device stopped answering" >&2; exit 1; }
echo "$uuid" > "$device/APP.partuuid"
echo "*** The target $board has been flashed successfully. ***"
