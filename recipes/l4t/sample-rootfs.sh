#!/bin/bash
# NVIDIA's sample rootfs, per device. The sample rootfs has no user for
# device.conf to belong to: tools/l4t_create_default_user.sh adds it later
# (useradd in a chroot of the extracted Linux_for_Tegra/rootfs), or
# oem-config does at first boot. So there are two ways:
#
# 1. Per-serial tarballs, stamped before any user exists: device.conf gets a
#    numeric owner, by default 1000:1000, the UID and GID useradd gives the
#    first user (what l4t_create_default_user.sh and oem-config create).
#
#      sample-rootfs.sh Tegra_Linux_Sample-Root-Filesystem_R36.x_aarch64.tbz2 serials.txt out/
#
#    then, per device, as NVIDIA documents (as root):
#      tar -xpf out/AZJN-0042-Tegra_Linux_Sample-Root-Filesystem_R36.x_aarch64.tbz2 -C Linux_for_Tegra/rootfs
#      ./apply_binaries.sh && ./tools/l4t_create_default_user.sh -u azaion ...
#      ./flash.sh BOARD ROOTDEV
#
# 2. The staging tree, after apply_binaries.sh and l4t_create_default_user.sh
#    created the user: device.conf is written into Linux_for_Tegra/rootfs in
#    place, owned by that user by name (default azaion), checked, and the
#    flash command given after -- runs (flash.sh without -r builds
#    system.img from the tree). Then, whether the flash worked or not,
#    device.conf is removed from the tree and `imprint verify
#    --no-credentials` checks that the tree is a clean base again: an OTA
#    payload (ota-package.sh) or the next device's image built from it
#    must not carry this device's password.
#
#      cd Linux_for_Tegra
#      sample-rootfs.sh --rootfs-dir rootfs AZJN-0042 -- sudo ./flash.sh BOARD mmcblk0p1
#
#    flash.sh leaves the images it built (bootloader/system.img and
#    system.img.raw) with this device's password until its next run.
#
# IMPRINT_OWNER overrides the owner in either way. IMPRINT_API_URL,
# IMPRINT_API_TOKEN_FILE (or IMPRINT_API_TOKEN), IMPRINT_OFFLINE_PASSWORD_FILE
# (test builds only: no API call) as in the other recipes.
set -euo pipefail
usage() {
    echo "usage: sample-rootfs.sh TARBALL SERIALS OUTDIR | --rootfs-dir DIR SERIAL -- FLASH COMMAND..." >&2
    exit 2
}
if [ -n "${IMPRINT_OFFLINE_PASSWORD_FILE:-}" ]; then
    api=(--offline --password-file "$IMPRINT_OFFLINE_PASSWORD_FILE")
else
    api=(--api-url "${IMPRINT_API_URL:?set IMPRINT_API_URL}")
    [ -n "${IMPRINT_API_TOKEN_FILE:-}" ] && api+=(--api-token-file "$IMPRINT_API_TOKEN_FILE")
fi
if [ "${1:-}" = --rootfs-dir ]; then
    [ $# -ge 5 ] && [ "$4" = -- ] || usage
    dir=$2 serial=$3
    shift 4
    owner=${IMPRINT_OWNER:-azaion}
    conf="$dir/etc/azaion/device.conf"
    # Whatever happens from here on, the tree loses this device's password.
    trap 'rm -f -- "$conf"' EXIT
    imprint provision --serial "$serial" --rootfs-dir "$dir" --owner "$owner" "${api[@]}"
    imprint verify "$dir" --serial "$serial" --owner "$owner" > /dev/null
    "$@"
    rm -f -- "$conf"
    trap - EXIT
    imprint verify --no-credentials "$dir" || {
        echo "sample-rootfs: $serial flashed, but $dir still holds credentials (see above): remove them before building anything else from it" >&2
        exit 1
    }
    echo "sample-rootfs: $serial flashed; $conf removed, $dir is a clean base again"
    exit 0
fi
[ $# -eq 3 ] || usage
tarball=$1 serials=$2 outdir=$3
owner=${IMPRINT_OWNER:-1000:1000}
imprint provision --serials "$serials" --image "$tarball" --output "$outdir/" \
    --owner "$owner" --skip-existing "${api[@]}"
grep -v '^[[:space:]]*\(#\|$\)' "$serials" | sed 's/[[:space:]]*#.*//' | while read -r serial; do
    imprint verify "$outdir/$serial-$(basename "$tarball")" --serial "$serial" --owner "$owner" > /dev/null ||
        { echo "sample-rootfs: $serial does not verify" >&2; exit 1; }
done
