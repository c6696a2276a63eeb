#!/bin/bash
# Stand-in for NVIDIA's tools/ota_tools/version_upgrade/l4t_generate_ota_package.sh,
# used by tests/it/recipes.rs. Our own code reproducing the files the real one
# reads and writes (R35 OTA tools, 2019-2024 version, as stored in
# Seeed-Studio/Linux_for_Tegra; not in the r35.3.1 BSP mirror: NVIDIA ships
# the OTA tools as a separate tarball). Cited by the real script's
# function names:
#
#   cd Linux_for_Tegra
#   l4t_generate_ota_package.sh [-s] BOARD BASE_VERSION
#
# - init(): LINUX_BASE_DIR is the current directory; without -s the old
#   bootloader/system.img.raw is removed, so the rootfs image is rebuilt.
# - generate_binaries(): `ROOTFS_ENC=.. ROOTFS_AB=.. flash.sh --no-flash
#   --sign BOARD mmcblk0p1` builds bootloader/system.img.raw from rootfs/.
# - generate_rootfs_image(): the raw image is mounted and `tar cpf - . |
#   gzip -1` of it becomes internal_device/system.img, its digest (echo -n)
#   system.img.sha1sum. Without root there is no mount here: the tree is
#   rootfs/ (what flash.sh put in the image) with the image's own
#   extlinux.conf, read with debugfs.
# - generate_package(): ota_backup_files_list.txt is copied from
#   tools/ota_tools/version_upgrade/ into the package and everything is
#   packed as ota_package.tar (+ .sha1sum); copy_common_images() adds
#   board_name, base_version, nv_ota_preserve_data.sh and
#   nv_ota_rootfs_updater.sh; all of it becomes ota_payload_package.tar.gz,
#   moved to bootloader/BOARD/.
set -eo pipefail
l4t=$(pwd)
ota_dir="$l4t/tools/ota_tools/version_upgrade"
skip=0
while getopts "s" opt; do
    case "$opt" in
        s) skip=1 ;;
        *) echo "Usage: sudo $0 [options] <target board> <bsp version>" >&2; exit 1 ;;
    esac
done
shift $((OPTIND - 1))
[ $# -eq 2 ] || { echo "Usage: sudo $0 [options] <target board> <bsp version>" >&2; exit 1; }
board=$1 base_version=$2
tmp="$l4t/ota_base_dir_tmp"
rm -rf "$tmp"
mkdir -p "$tmp/internal_device"
[ "$skip" = 1 ] || rm -f "$l4t/bootloader/system.img.raw"
ROOTFS_ENC=${ROOTFS_ENC:-} ROOTFS_AB=${ROOTFS_AB:-} "$l4t/flash.sh" --no-flash --sign "$board" mmcblk0p1
[ -f "$l4t/bootloader/system.img.raw" ] || { echo "bootloader/system.img.raw was not built" >&2; exit 1; }

stage=$(mktemp -d)
tar --xattrs -C "$l4t/rootfs" -cf - . | tar --xattrs -C "$stage" -xpf -
mkdir -p "$stage/boot/extlinux"
debugfs -R "cat /boot/extlinux/extlinux.conf" "$l4t/bootloader/system.img.raw" 2> /dev/null \
    > "$stage/boot/extlinux/extlinux.conf"
(cd "$stage" && tar --numeric-owner --xattrs -cpf - .) | gzip -1 > "$tmp/internal_device/system.img"
rm -rf "$stage"
echo -n "$(sha1sum "$tmp/internal_device/system.img" | cut -d' ' -f1)" > "$tmp/internal_device/system.img.sha1sum"

cp "$ota_dir/ota_backup_files_list.txt" "$tmp/"
(cd "$tmp" && tar cf ota_package.tar ./* --remove-files)
echo -n "$(sha1sum "$tmp/ota_package.tar" | cut -d' ' -f1)" > "$tmp/ota_package.tar.sha1sum"
echo -n "$board" > "$tmp/board_name"
echo -n "$base_version" > "$tmp/base_version"
cp "$ota_dir/nv_ota_preserve_data.sh" "$ota_dir/nv_ota_rootfs_updater.sh" "$tmp/"
(cd "$tmp" && tar zcf ota_payload_package.tar.gz ./* --remove-files)
mkdir -p "$l4t/bootloader/$board"
mv "$tmp/ota_payload_package.tar.gz" "$l4t/bootloader/$board/"
rm -rf "$tmp"
echo "SUCCESS: generate OTA package for $board"
