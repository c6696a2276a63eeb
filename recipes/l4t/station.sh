#!/bin/bash
# Flashing station for flash.sh (Jetson Xavier/TX2/Nano, and Orin boards
# flashed with flash.sh): one device at a time, each with its own
# credentials. For Orin's initrd flash (l4t_initrd_flash.sh) use
# initrd-station.sh: that flow never reads bootloader/system.img.
#
#   cd Linux_for_Tegra
#   # once per release and board: build system.img, keep it and its UUID
#   sudo station.sh --prepare jetson-agx-xavier-devkit mmcblk0p1
#   # per device
#   sudo IMPRINT_API_URL=https://admin.example IMPRINT_API_TOKEN_FILE=/root/token \
#     station.sh AZJN-0042 jetson-agx-xavier-devkit mmcblk0p1
#
# --prepare runs `flash.sh --no-flash BOARD ROOTDEV`, which builds
# bootloader/system.img from rootfs/ (create the device user first, e.g.
# tools/l4t_create_default_user.sh -u azaion), and keeps it as
# bootloader/system.img.base with bootloader/l4t-rootfs-uuid.txt as
# bootloader/system.img.base.uuid: the image's extlinux.conf boots
# root=PARTUUID=<that UUID>, and flash.sh gives the APP partition the UUID
# in l4t-rootfs-uuid.txt, so the two must match or the device does not
# boot. Per device: imprint writes a new image from the base (never
# changed), it is verified, put in place as bootloader/system.img and
# flashed with `flash.sh -r` (reuse system.img; without -r flash.sh would
# rebuild it from rootfs/ without the credentials). Pass or fail, the base
# is put back on exit (trap): no device's password stays in bootloader/.
#
# Environment: IMPRINT_API_URL, IMPRINT_API_TOKEN_FILE (or IMPRINT_API_TOKEN),
# IMPRINT_OWNER (default azaion), IMPRINT_OFFLINE_PASSWORD_FILE (test
# stations only: no API call).
set -euo pipefail

usage() { echo "usage: station.sh --prepare|SERIAL BOARD ROOTDEV" >&2; exit 2; }
[ $# -eq 3 ] || usage
what=$1 board=$2 rootdev=$3
owner=${IMPRINT_OWNER:-azaion}
base=bootloader/system.img.base
uuid=bootloader/l4t-rootfs-uuid.txt
[ -x ./flash.sh ] || { echo "station: run me in Linux_for_Tegra (./flash.sh not found)" >&2; exit 1; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

if [ "$what" = --prepare ]; then
    as_root ./flash.sh --no-flash "$board" "$rootdev"
    cp -p bootloader/system.img "$base"
    cp -p "$uuid" "$base.uuid"
    echo "station: kept bootloader/system.img as $base, $uuid as $base.uuid"
    exit 0
fi

serial=$what
[ -f "$base" ] && [ -f "$base.uuid" ] ||
    { echo "station: no $base (and $base.uuid); run station.sh --prepare $board $rootdev first" >&2; exit 1; }
if ! cmp -s "$uuid" "$base.uuid"; then
    echo "station: $uuid is not the UUID $base was built with ($base.uuid); the device would not boot. Restore it, or run --prepare again" >&2
    exit 1
fi

work=$(mktemp -d)
restore() {
    cp -p "$base" bootloader/system.img
    rm -rf "$work"
}
trap restore EXIT

out="$work/$serial-system.img"
if [ -n "${IMPRINT_OFFLINE_PASSWORD_FILE:-}" ]; then
    api=(--offline --password-file "$IMPRINT_OFFLINE_PASSWORD_FILE")
else
    api=(--api-url "${IMPRINT_API_URL:?set IMPRINT_API_URL}")
    [ -n "${IMPRINT_API_TOKEN_FILE:-}" ] && api+=(--api-token-file "$IMPRINT_API_TOKEN_FILE")
fi
imprint provision --serial "$serial" --image "$base" --output "$out" --owner "$owner" "${api[@]}"
imprint verify "$out" --serial "$serial" --owner "$owner" > /dev/null ||
    { echo "station: $out does not verify" >&2; exit 1; }
(cd "$work" && sha256sum --quiet -c "$serial-system.img.sha256")
cp "$out" bootloader/system.img
# -r: flash bootloader/system.img as it is.
as_root ./flash.sh -r "$board" "$rootdev"
echo "station: $serial flashed"
