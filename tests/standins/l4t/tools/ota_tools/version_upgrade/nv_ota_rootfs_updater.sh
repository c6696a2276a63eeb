#!/bin/bash
# Stand-in for NVIDIA's tools/ota_tools/version_upgrade/nv_ota_rootfs_updater.sh,
# used by tests/it/recipes.rs. Our own code reproducing what the real one does
# to the rootfs partition (R35 OTA tools, stored in
# Seeed-Studio/Linux_for_Tegra at commit 573eaf03; not in the r35.3.1 BSP
# mirror: NVIDIA ships the OTA tools as a separate tarball). Cited by the
# real script's function names:
#
#   nv_ota_rootfs_updater.sh -p PARTITION -d WORK_DIR IMAGE
#
# update_rootfs_partition(): IMAGE must pass `gzip -t`; WORK_DIR's
# nv_ota_preserve_data.sh is sourced; the partition is mounted (here
# PARTITION is a directory standing for the mounted partition);
# back_up_specified_files() backs up extlinux.conf, nv_boot_control.conf and
# fstab, then the customer's files (ota_backup_customer_files); every entry
# of the partition except ota* is deleted (`find . -maxdepth 1 ! -name
# "ota*" -exec rm -rf {} \;`); IMAGE is extracted (tar -xpf --numeric-owner
# --xattrs); restore_specified_files() restores the customer's files
# (ota_restore_customer_files) and keeps the old fstab and extlinux.conf
# beside the new ones as <file>.<base_version>.
set -eo pipefail
work="" part=""
while getopts "d:p:" opt; do
    case "$opt" in
        d) work=$OPTARG ;;
        p) part=$OPTARG ;;
        *) echo "Usage: nv_ota_rootfs_updater.sh -p <partition> -d <work dir> <rootfs image>" >&2; exit 1 ;;
    esac
done
shift $((OPTIND - 1))
image=${1:?rootfs image}
[ -f "$image" ] || { echo "Specified rootfs image $image is not found" >&2; exit 1; }
[ -d "$work" ] || { echo "Specified OTA work directory $work is not found" >&2; exit 1; }
[ -d "$part" ] || { echo "Specified rootfs partition $part is not found" >&2; exit 1; }
gzip -t "$image" || { echo "The rootfs image $image is invalid." >&2; exit 1; }
# shellcheck disable=SC1091
source "$work/nv_ota_preserve_data.sh"
for f in boot/extlinux/extlinux.conf:extlinux.conf.ota_backup etc/fstab:fstab.ota_backup; do
    [ -f "$part/${f%%:*}" ] && [ ! -f "$work/${f##*:}" ] && cp -f "$part/${f%%:*}" "$work/${f##*:}"
done
ota_backup_customer_files "$work" "$part"
(cd "$part" && find . -mindepth 1 -maxdepth 1 ! -name 'ota*' -exec rm -rf {} \;)
tar -xpf "$image" --numeric-owner --xattrs --xattrs-include='*' -C "$part/"
ota_restore_customer_files "$work" "$part"
base_version=$(cat "$work/base_version")
for f in boot/extlinux/extlinux.conf:extlinux.conf.ota_backup etc/fstab:fstab.ota_backup; do
    if [ -f "$work/${f##*:}" ] && [ -d "$(dirname "$part/${f%%:*}")" ]; then
        cp -f "$work/${f##*:}" "$part/${f%%:*}.$base_version"
    fi
done
echo "rootfs updated"
