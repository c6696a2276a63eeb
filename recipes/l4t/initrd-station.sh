#!/bin/bash
# Flashing station for initrd flash (Jetson Orin: tools/kernel_flash/
# l4t_initrd_flash.sh), one device at a time, each with its own credentials.
#
# Initrd flash never reads bootloader/system.img. `l4t_initrd_flash.sh
# --no-flash` has l4t_create_images_for_kernel_flash.sh write
# tools/kernel_flash/images/internal/ (and external/ with --external-device):
# flash.idx, flash.cfg with APP=system.img (APP_ext=... for external), the
# APP image itself (a tar of the rootfs with xattrs in R35/R36, a zstd tar in
# newer releases; with --sparse the sparse image, or a zstd of the raw image)
# and system.img.sha1sum (the bare digest, which l4t_flash_from_kernel.sh
# requires). `--flash-only` flashes those files as they are. So this script
# stamps the APP image(s) named in flash.cfg, whatever their form, and writes
# the .sha1sum beside each.
#
#   cd Linux_for_Tegra
#   # once per release and board: build the images, keep pristine copies
#   sudo initrd-station.sh --prepare [FLASH OPTIONS] jetson-orin-nano-devkit internal
#   # per device (same FLASH OPTIONS, e.g. --external-device nvme0n1p1
#   #   -c tools/kernel_flash/flash_l4t_t234_nvme.xml --sparse --showlogs)
#   sudo IMPRINT_API_URL=https://admin.example IMPRINT_API_TOKEN_FILE=/root/token \
#     initrd-station.sh AZJN-0042 [FLASH OPTIONS] jetson-orin-nano-devkit internal
#
# FLASH OPTIONS go to l4t_initrd_flash.sh unchanged (before the board). The
# pristine images are kept in $IMPRINT_STATION_DIR (default
# imprint-station/), outside images/, whose whole content is flashed. After
# each device, pass or fail, the pristine images are put back (trap), so no
# device's password stays in images/.
#
# Environment: IMPRINT_API_URL, IMPRINT_API_TOKEN_FILE (or IMPRINT_API_TOKEN),
# IMPRINT_OWNER (default azaion: create the user in rootfs/ with
# tools/l4t_create_default_user.sh -u azaion before --prepare),
# IMPRINT_OFFLINE_PASSWORD_FILE (test stations only: no API call).
set -euo pipefail

usage() {
    echo "usage: initrd-station.sh --prepare|SERIAL [l4t_initrd_flash.sh options] BOARD ROOTDEV" >&2
    exit 2
}
[ $# -ge 3 ] || usage
what=$1
shift
flash_tool=./tools/kernel_flash/l4t_initrd_flash.sh
images=tools/kernel_flash/images
station=${IMPRINT_STATION_DIR:-imprint-station}
owner=${IMPRINT_OWNER:-azaion}
[ -x "$flash_tool" ] || { echo "initrd-station: run me in Linux_for_Tegra ($flash_tool not found)" >&2; exit 1; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# The APP images flash.cfg names, one "LOCATION FILE" a line.
app_images() {
    local loc cfg
    for loc in internal external; do
        cfg="$images/$loc/flash.cfg"
        [ -f "$cfg" ] || continue
        sed -n 's/^APP\(_b\)\{0,1\}\(_ext\)\{0,1\}=\(.*\)$/\3/p' "$cfg" | sort -u |
            while read -r file; do echo "$loc $file"; done
    done
}

if [ "$what" = --prepare ]; then
    as_root "$flash_tool" --no-flash "$@"
    list=$(app_images)
    [ -n "$list" ] || { echo "initrd-station: no APP image in $images/*/flash.cfg" >&2; exit 1; }
    rm -rf "$station"
    mkdir -p -m 0700 "$station"
    while read -r loc file; do
        cp -p "$images/$loc/$file" "$station/$loc-$file"
        echo "initrd-station: kept $images/$loc/$file as $station/$loc-$file"
    done <<< "$list"
    sums=$(cd "$station" && sha256sum -- *)
    echo "$sums" > "$station/SHA256SUMS"
    exit 0
fi

serial=$what
[ -f "$station/SHA256SUMS" ] || { echo "initrd-station: no pristine images in $station; run initrd-station.sh --prepare first" >&2; exit 1; }
(cd "$station" && sha256sum --quiet -c SHA256SUMS) ||
    { echo "initrd-station: the pristine images in $station changed; run --prepare again" >&2; exit 1; }
list=$(app_images)
[ -n "$list" ] || { echo "initrd-station: no APP image in $images/*/flash.cfg; run --prepare" >&2; exit 1; }

work=$(mktemp -d)
restore() {
    # The pristine images back in place, with their digests: the next
    # device, or a plain --flash-only, never gets this one's password.
    while read -r loc file; do
        cp -p "$station/$loc-$file" "$images/$loc/$file"
        sha1sum "$images/$loc/$file" | cut -d' ' -f1 > "$images/$loc/$file.sha1sum"
    done <<< "$list"
    rm -rf "$work"
}
trap restore EXIT

if [ -n "${IMPRINT_OFFLINE_PASSWORD_FILE:-}" ]; then
    api=(--offline --password-file "$IMPRINT_OFFLINE_PASSWORD_FILE")
else
    api=(--api-url "${IMPRINT_API_URL:?set IMPRINT_API_URL}")
    [ -n "${IMPRINT_API_TOKEN_FILE:-}" ] && api+=(--api-token-file "$IMPRINT_API_TOKEN_FILE")
fi
# One call for every APP image: one password, one account call.
inputs=()
while read -r loc file; do inputs+=(--image "$station/$loc-$file"); done <<< "$list"
imprint provision --serial "$serial" "${inputs[@]}" --output "$work/" --owner "$owner" \
    --checksum sha256,sha1 "${api[@]}"
while read -r loc file; do
    out="$work/$serial-$loc-$file"
    imprint verify "$out" --serial "$serial" --owner "$owner" > /dev/null ||
        { echo "initrd-station: $out does not verify" >&2; exit 1; }
    cp "$out" "$images/$loc/$file"
    cp "$out.sha1sum" "$images/$loc/$file.sha1sum"
    [ "$(sha1sum "$images/$loc/$file" | cut -d' ' -f1)" = "$(cat "$images/$loc/$file.sha1sum")" ] ||
        { echo "initrd-station: $images/$loc/$file.sha1sum does not match" >&2; exit 1; }
done <<< "$list"
as_root "$flash_tool" --flash-only "$@"
echo "initrd-station: $serial flashed"
