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
# imprint-station/), outside images/, whose whole content is flashed. The
# layout is read from images/*/flash.cfg (APP, APP_b, APP_ext, APP_b_ext:
# with ROOTFS_AB=1 both slots) and flash.idx: every APP image is stamped in
# one call (one password for all slots), put in place (mode 0600) and, right
# before flashing, checked to carry this device's credentials. After each
# device, pass or fail, the pristine images are put back (trap), so no
# device's password stays in images/.
#
# ROOTFS_ENC=1 (internal storage; one rootfs slot, or two with
# ROOTFS_AB=1): see initrd-station-enc.sh, which this script runs then; ECID
# and ENC_RFS_KEY are needed per device.
#
# Refused, with what to do instead:
# - --massflash: every device it flashes reads the same images/, so all of
#   them would get one serial's credentials. Flash one device at a time
#   (one in recovery mode, or pick it with --usb-instance BUS-PORT), or
#   give each USB port its own Linux_for_Tegra tree (own images/ and
#   imprint-station/) and run this script in each with its --usb-instance.
# - ROOTFS_ENC=1 on an external device (see initrd-station-enc.sh).
# - an APP* entry in flash.cfg other than the four above.
#
# Environment: IMPRINT_API_URL, IMPRINT_API_TOKEN_FILE (or IMPRINT_API_TOKEN),
# IMPRINT_OWNER (default azaion: create the user in rootfs/ with
# tools/l4t_create_default_user.sh -u azaion before --prepare),
# IMPRINT_OFFLINE_PASSWORD_FILE (test stations only: no API call), ROOTFS_AB
# and ROOTFS_ENC (passed to the flash tool), ECID and ENC_RFS_KEY
# (ROOTFS_ENC=1, per device).
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
# sudo drops the environment: the board configs read ROOTFS_AB/ROOTFS_ENC.
as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; else sudo env "ROOTFS_AB=${ROOTFS_AB:-}" "ROOTFS_ENC=${ROOTFS_ENC:-}" "$@"; fi
}
die() { echo "initrd-station: $*" >&2; exit 1; }

for arg in "$@"; do
    if [[ "$arg" = --massflash* ]]; then
        why="every device it flashes reads the same tools/kernel_flash/images/, so all of them would get one serial's credentials (one account, one password on every device)"
        # The container's passphrase is bound to one chip's ECID.
        [ "${ROOTFS_ENC:-}" = 1 ] &&
            why+=", and with ROOTFS_ENC=1 one encrypted rootfs, whose passphrase is derived from one chip's ECID: every other device could not open it and would not boot"
        die "--massflash is refused: $why. Flash one device at a time (one in recovery mode, or choose it with --usb-instance BUS-PORT), or keep one Linux_for_Tegra tree per USB port, each with its own --prepare and --usb-instance, and run them side by side."
    fi
done
if [ "${ROOTFS_ENC:-}" = 1 ]; then
    # shellcheck source=initrd-station-enc.sh
    source "$(dirname "${BASH_SOURCE[0]}")/initrd-station-enc.sh"
    exit 0
fi

# The APP images the layout writes, one "LOCATION FILE" a line: the files
# flash.cfg names for APP and APP_b (APP_ext, APP_b_ext for the external
# device), which l4t_flash_from_kernel.sh writes to the rootfs slots.
# Anything else that would write a rootfs is refused.
app_images() {
    local loc cfg var file
    for loc in internal external; do
        cfg="$images/$loc/flash.cfg"
        [ -f "$cfg" ] || continue
        if grep -q ':APP_ENC' "$images/$loc/flash.idx" 2> /dev/null; then
            die "$images/$loc/flash.idx has an encrypted rootfs partition (APP_ENC), which the flash tool packages only with ROOTFS_ENC=1: run initrd-station.sh with ROOTFS_ENC=1 (and ECID, ENC_RFS_KEY) for each device, or --prepare again without it."
        fi
        while IFS='=' read -r var file; do
            case "$var" in
                APP|APP_b|APP_ext|APP_b_ext) ;;
                *) die "$cfg names $var=$file, an image this script does not know how to stamp (it stamps APP, APP_b, APP_ext and APP_b_ext). Remove it, or stamp and flash that image yourself." ;;
            esac
            case "$file" in
                system_boot.img*) die "$cfg flashes $file to $var: that is the boot partition of an encrypted rootfs (ROOTFS_ENC=1): run initrd-station.sh with ROOTFS_ENC=1 (and ECID, ENC_RFS_KEY), or --prepare again without it." ;;
                ""|*/*) die "$cfg names '$file' for $var: not a file in $images/$loc" ;;
            esac
            echo "$loc $file"
        done < <(grep '^APP[A-Za-z_]*=' "$cfg") | sort -u
    done
}

if [ "$what" = --prepare ]; then
    as_root "$flash_tool" --no-flash "$@"
    list=$(app_images)
    [ -n "$list" ] || die "no APP image in $images/*/flash.cfg"
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
[ -n "$list" ] || die "no APP image in $images/*/flash.cfg; run --prepare"
while read -r loc file; do
    [ -f "$station/$loc-$file" ] ||
        die "$images/$loc/flash.cfg flashes $file, which --prepare did not keep (the layout changed?); run --prepare again"
done <<< "$list"

work=$(mktemp -d)
restore() {
    # The stamped copies gone and the pristine images back in place, with
    # their digests: the next device, or a plain --flash-only, never gets
    # this one's password. Each step runs even when one before it fails
    # (under set -e the trap would stop at the first and leave copies).
    set +e
    while read -r loc file; do
        rm -f "$images/$loc/$file"
        cp -p "$station/$loc-$file" "$images/$loc/$file" ||
            echo "initrd-station: $station/$loc-$file could not be put back; run --prepare again" >&2
        sha1sum "$images/$loc/$file" | cut -d' ' -f1 > "$images/$loc/$file.sha1sum"
    done <<< "$list"
    rm -rf "$work"
}
trap restore EXIT

# shellcheck source=station-api.sh
source "$(dirname "${BASH_SOURCE[0]}")/station-api.sh"
# One call for every APP image: one password, one account call.
inputs=()
while read -r loc file; do inputs+=(--image "$station/$loc-$file"); done <<< "$list"
imprint provision --serial "$serial" "${inputs[@]}" --output "$work/" --owner "$owner" \
    --checksum sha256,sha1 "${api[@]}"
while read -r loc file; do
    out="$work/$serial-$loc-$file"
    imprint verify "$out" --serial "$serial" --owner "$owner" > /dev/null ||
        { echo "initrd-station: $out does not verify" >&2; exit 1; }
    install -m 0600 "$out" "$images/$loc/$file"
    cp "$out.sha1sum" "$images/$loc/$file.sha1sum"
    [ "$(sha1sum "$images/$loc/$file" | cut -d' ' -f1)" = "$(cat "$images/$loc/$file.sha1sum")" ] ||
        die "$images/$loc/$file.sha1sum does not match"
done <<< "$list"
# Right before flashing: every image the layout writes carries this
# device's credentials.
list=$(app_images)
while read -r loc file; do
    imprint verify "$images/$loc/$file" --serial "$serial" --owner "$owner" > /dev/null ||
        die "$images/$loc/$file does not carry $serial's credentials; not flashing"
done <<< "$list"
as_root "$flash_tool" --flash-only "$@"
echo "initrd-station: $serial flashed"
