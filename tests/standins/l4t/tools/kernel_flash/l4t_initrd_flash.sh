#!/bin/bash
# Stand-in for NVIDIA's tools/kernel_flash/l4t_initrd_flash.sh, used by
# tests/it/recipes.rs. It reproduces the files and flags the recipes rely on
# (from l4t_create_images_for_kernel_flash.sh and l4t_flash_from_kernel.sh)
# and flashes nothing; the "device" is the directory $L4T_STANDIN_DEVICE.
#
# --no-flash: flash.sh --no-flash --sign builds bootloader/system.img(.raw),
#   then package_images() fills images/internal (images/external with
#   --external-device): flash.idx, the APP image under the name the
#   partition layout gives it (system.img), written as
#     R35/R36 (L4T_STANDIN_RELEASE=r36, default): `tar --xattrs -cpf
#       --numeric-owner` of the rootfs; with --sparse the sparse image
#     newer (L4T_STANDIN_RELEASE=r38): the same tar compressed with zstd;
#       with --sparse the raw image compressed with zstd
#   plus system.img.sha1sum (`sha1sum | cut -f 1 -d ' '`, the digest alone)
#   and flash.cfg with APP=system.img (APP_ext=system.img for external)
#   followed by external_device= and CHIPID=.
# --flash-only: sources images/{internal,external}/flash.cfg; for each APP
#   variable, the image ${!APP} and ${!APP}.sha1sum must exist (as
#   do_write_APP requires); the digest is compared as the OTA scripts do;
#   the partition gets the image's contents: $L4T_STANDIN_DEVICE/<loc>-APP/
#   (a tar is extracted with --xattrs --numeric-owner) or <loc>-APP.img.
# Neither flag: both, as the real script does.
set -eo pipefail
here=$(cd "$(dirname "$0")" && pwd)
l4t=${here%/tools/kernel_flash}
images="$here/images"
no_flash=0 flash_only=0 sparse=0 external_device="" external_only=0
while [ $# -gt 2 ]; do
    case "$1" in
        --no-flash) no_flash=1 ;;
        --flash-only) flash_only=1 ;;
        --sparse) sparse=1 ;;
        --external-only) external_only=1 ;;
        --external-device) external_device=$2; shift ;;
        -c|-S|-p|-k|--network|--usb-instance) shift ;;
        --showlogs|--erase-all|--keep|--reuse) ;;
        *) echo "l4t_initrd_flash.sh stand-in: unknown option $1" >&2; exit 1 ;;
    esac
    shift
done
[ $# -eq 2 ] || { echo "Usage: l4t_initrd_flash.sh <options> <board-name> <rootdev>" >&2; exit 1; }
board=$1 rootdev=$2
echo "$no_flash $flash_only $*" >> "${L4T_STANDIN_LOG:-/dev/null}"

package() { # LOCATION EXT
    local dest="$images/$1" ext=$2
    mkdir -p "$dest"
    rm -f "$dest/flash.cfg"
    echo "2, 3:0:APP, 1048576, 33554432, system.img, 1, 0" > "$dest/flash.idx"
    case "${L4T_STANDIN_RELEASE:-r36}:$sparse" in
        r36:0) tar --xattrs -cpf "$dest/system.img" --numeric-owner -C "$l4t/rootfs" . ;;
        r36:1) cp "$l4t/bootloader/system.img" "$dest/system.img" ;;
        r38:0) tar --xattrs -cp --numeric-owner -C "$l4t/rootfs" . | zstd -q -c > "$dest/system.img" ;;
        r38:1) zstd -q -c "$l4t/bootloader/system.img.raw" > "$dest/system.img" ;;
    esac
    sha1sum "$dest/system.img" | cut -f 1 -d ' ' > "$dest/system.img.sha1sum"
    echo "APP$ext=system.img" >> "$dest/flash.cfg"
    printf 'external_device=%s\nCHIPID=0x23\n' "$external_device" >> "$dest/flash.cfg"
}

write_app() { # IMAGE TARGET
    local image=$1 target=$2 magic
    magic=$(head -c4 "$image" | od -An -tx1 | tr -d ' \n')
    case "$magic" in
        3aff26ed) simg2img "$image" "$target.img" ;;
        28b52ffd)
            zstd -q -dc "$image" > "$target.dec"
            write_app "$target.dec" "$target"
            rm -f "$target.dec" ;;
        *)
            # is_tar_archive: `file` says "tar archive" (the ustar magic).
            if [ "$(dd if="$image" bs=1 skip=257 count=5 status=none)" = ustar ]; then
                rm -rf "$target"; mkdir -p "$target"
                tar --xattrs -xpf "$image" --numeric-owner -C "$target"
            else
                cp "$image" "$target.img"
            fi ;;
    esac
}

if [ "$flash_only" = 0 ]; then
    if [ "$external_only" = 0 ]; then
        "$l4t/flash.sh" --no-flash --sign "$board" "$rootdev"
        package internal ""
    fi
    if [ -n "$external_device" ]; then
        "$l4t/flash.sh" --no-flash --sign --external-device -c ext.xml "$board" external
        package external _ext
    fi
    echo "Success"
fi
[ "$no_flash" = 1 ] && exit 0

device=${L4T_STANDIN_DEVICE:?}
mkdir -p "$device"
flashed=0
for loc in internal external; do
    cfg="$images/$loc/flash.cfg"
    [ -f "$cfg" ] || continue
    # shellcheck disable=SC1090
    source "$cfg"
    for var in APP APP_b APP_ext APP_b_ext; do
        [ -n "${!var}" ] || continue
        image="$images/$loc/${!var}"
        [ -f "$image" ] || { echo "APP image $image is not found !!!" >&2; exit 1; }
        [ -f "$image.sha1sum" ] || { echo "Sha1 checksum file $image.sha1sum is not found !!!" >&2; exit 1; }
        if [ "$(sha1sum "$image" | cut -d' ' -f1)" != "$(cat "$image.sha1sum")" ]; then
            echo "sha1 checksum of $image does not match $image.sha1sum" >&2; exit 1
        fi
        write_app "$image" "$device/$loc-$var"
        flashed=$((flashed + 1))
    done
    unset APP APP_b APP_ext APP_b_ext
done
[ "$flashed" -gt 0 ] || { echo "nothing to flash in $images" >&2; exit 1; }
[ "${L4T_STANDIN_FAIL:-0}" = 1 ] && { echo "l4t_initrd_flash.sh stand-in: the device stopped answering" >&2; exit 1; }
echo "Flash is successful"
