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
#    place, owned by that user by name (default azaion), and the next
#    flash.sh (without -r) builds system.img from it. The tree then holds
#    this device's password until the next device's run.
#
#      sample-rootfs.sh --rootfs-dir Linux_for_Tegra/rootfs AZJN-0042
#
# IMPRINT_OWNER overrides the owner in either way. IMPRINT_API_URL,
# IMPRINT_API_TOKEN_FILE (or IMPRINT_API_TOKEN), IMPRINT_OFFLINE_PASSWORD_FILE
# (test builds only: no API call) as in the other recipes.
set -euo pipefail
usage() {
    echo "usage: sample-rootfs.sh TARBALL SERIALS OUTDIR | --rootfs-dir DIR SERIAL" >&2
    exit 2
}
if [ -n "${IMPRINT_OFFLINE_PASSWORD_FILE:-}" ]; then
    api=(--offline --password-file "$IMPRINT_OFFLINE_PASSWORD_FILE")
else
    api=(--api-url "${IMPRINT_API_URL:?set IMPRINT_API_URL}")
    [ -n "${IMPRINT_API_TOKEN_FILE:-}" ] && api+=(--api-token-file "$IMPRINT_API_TOKEN_FILE")
fi
if [ "${1:-}" = --rootfs-dir ]; then
    [ $# -eq 3 ] || usage
    dir=$2 serial=$3
    owner=${IMPRINT_OWNER:-azaion}
    imprint provision --serial "$serial" --rootfs-dir "$dir" --owner "$owner" "${api[@]}"
    imprint verify "$dir" --serial "$serial" --owner "$owner" > /dev/null
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
