#!/bin/bash
# Flashing station: stamp one device's credentials into L4T's system.img and
# flash it with flash.sh -r (reuse system.img instead of rebuilding it from
# rootfs/, which would drop the credentials).
#
#   cd Linux_for_Tegra
#   IMPRINT_API_URL=https://admin.example IMPRINT_API_TOKEN=... \
#     station.sh AZJN-0042 jetson-orin-nano-devkit internal
#
# bootloader/system.img.base is the pristine image (flash.sh -r ... once, or
# `./flash.sh --no-flash <board> <rootdev>`, then keep a copy). Per device:
# imprint writes a new image (the base is never changed), verifies it, puts
# it in place and flashes.
set -euo pipefail

serial=${1:?usage: station.sh SERIAL BOARD ROOTDEV}
board=${2:?usage: station.sh SERIAL BOARD ROOTDEV}
rootdev=${3:?usage: station.sh SERIAL BOARD ROOTDEV}
owner=${IMPRINT_OWNER:-azaion}
base=bootloader/system.img.base
[ -f "$base" ] || cp bootloader/system.img "$base"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
out="$work/$serial-system.img"
if [ -n "${IMPRINT_OFFLINE_PASSWORD_FILE:-}" ]; then
    api=(--offline --password-file "$IMPRINT_OFFLINE_PASSWORD_FILE")
else
    api=(--api-url "${IMPRINT_API_URL:?set IMPRINT_API_URL}")
fi
imprint provision --serial "$serial" --image "$base" --output "$out" --owner "$owner" "${api[@]}"
imprint verify "$out" --serial "$serial" --owner "$owner"
(cd "$work" && sha256sum -c "$serial-system.img.sha256")
cp "$out" bootloader/system.img
# -r: reuse bootloader/system.img as it is.
if [ "$(id -u)" = 0 ]; then ./flash.sh -r "$board" "$rootdev"; else sudo ./flash.sh -r "$board" "$rootdev"; fi
