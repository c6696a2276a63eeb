#!/bin/bash
# Stand-in for NVIDIA's tools/kernel_flash/l4t_initrd_flash.sh, used by
# tests/it/recipes.rs. Our own code: it reproduces the files the real scripts
# (release r35.3.1: l4t_initrd_flash.sh, l4t_initrd_flash.func,
# l4t_create_images_for_kernel_flash.sh, l4t_flash_from_kernel.sh, cited
# below by name and line) read and write, and flashes nothing; each
# "device" is a directory.
#
# --no-flash (or neither flag): flash.sh --no-flash --sign builds the images
#   in bootloader/ and the substituted layout bootloader/flash.xml (see
#   ../../flash.sh), then package_images()
#   (l4t_create_images_for_kernel_flash.sh:285-396) fills images/internal
#   (images/external with --external-device): flash.idx, and for each
#   partition of the layout
#   - APP and APP_b (:329-362): the image under the name flash.xml gives it
#     (system.img, system.img_b; system_boot.img with ROOTFS_ENC=1),
#     written as
#       R35/R36 (L4T_STANDIN_RELEASE=r36, default): `tar --xattrs -cpf
#         --numeric-owner` of the rootfs (:343-346); with --sparse the
#         sparse image (:338-339)
#       newer (L4T_STANDIN_RELEASE=r38): the same tar compressed with zstd;
#         with --sparse the raw image compressed with zstd
#     plus FILE.sha1sum (`sha1sum | cut -f 1 -d ' '`, the digest alone,
#     :350-351) and the line NAME${ext}=FILE in flash.cfg (:353-355), ext
#     being _ext for the external device (:290-296);
#   - any other partition (APP_ENC: system_root_encrypted.img, and
#     APP_ENC_b: system_root_encrypted.img_b with ROOTFS_AB=1, ...): the
#     file copied as it is (:364-389); its flash.idx line gives the
#     partition (field 2), start (3), file (5) and file size (6), as
#     do_write_storage reads it (l4t_flash_from_kernel.sh:736-742);
#   then external_device= and CHIPID= in flash.cfg (:392-395).
# --flash-only: l4t_flash_from_kernel.sh sources images/{internal,external}/
#   flash.cfg (:1266-1271); APP and APP_b are written by do_write_APP
#   (:812-920, called at :1117-1121): the image ${!NAME${ext}} and its
#   .sha1sum must exist (:857-872), a tar is extracted with --xattrs
#   --numeric-owner (:891-910), anything else written as an image; the
#   other partitions of flash.idx get their files (do_write_storage,
#   :722-810, flash_partition :443-520): a sparse image through simg2img
#   (:464-472), anything else as the flash.idx size (field 6) of its
#   bytes (:512-520), no digest checked (VERIFY_WRITE=0, :1194). Here a
#   partition is DEVICE/<loc>-<NAME>/ (an extracted tar) or
#   DEVICE/<loc>-<NAME>.img.
# ROOTFS_ENC=1 (the environment flash.sh reads; README_initrd_flash.txt
#   Workflow 10, Workflow 11 examples 3-4): flash.sh builds system_boot.img
#   (APP, packaged as above) and the container system_root_encrypted.img
#   for the ECID of the device in recovery mode (see ../../flash.sh), and
#   the container is an "other partition": copied at --no-flash, written
#   at --flash-only.
# Devices: L4T_STANDIN_RCM lists the USB paths of the Jetsons in recovery
#   mode (default "1-1"; fill_devpaths, l4t_initrd_flash.sh:59-121, keeps
#   only the one --usb-instance names, :108). Without --massflash one
#   device is flashed (max_massflash=1, l4t_initrd_flash.func:190-199; a
#   full run refuses more than one in recovery mode, l4t_initrd_flash.sh:
#   170-177), into $L4T_STANDIN_DEVICE. `--massflash [N]` (func:146-150,
#   default 10) flashes every device in recovery mode, up to N
#   (l4t_initrd_flash.sh:185-188), each from the same images/
#   (l4t_initrd_flash.sh:197-230), into $L4T_STANDIN_DEVICE/<USB path>.
set -eo pipefail
here=$(cd "$(dirname "$0")" && pwd)
l4t=${here%/tools/kernel_flash}
images="$here/images"
no_flash=0 flash_only=0 sparse=0 external_device="" external_only=0
massflash=0 max_massflash="" usb_instance=""
while [ $# -gt 2 ]; do
    case "$1" in
        --no-flash) no_flash=1 ;;
        --flash-only) flash_only=1 ;;
        --sparse) sparse=1 ;;
        --external-only) external_only=1 ;;
        --external-device) external_device=$2; shift ;;
        --usb-instance) usb_instance=$2; shift ;;
        --massflash)
            massflash=1
            case "$2" in *[!0-9]*|"") ;; *) max_massflash=$2; shift ;; esac ;;
        -c|-S|-p|-k|--network) shift ;;
        --showlogs|--erase-all|--keep|--reuse) ;;
        *) echo "l4t_initrd_flash.sh stand-in: unknown option $1" >&2; exit 1 ;;
    esac
    shift
done
[ $# -eq 2 ] || { echo "Usage: l4t_initrd_flash.sh <options> <board-name> <rootdev>" >&2; exit 1; }
board=$1 rootdev=$2
echo "$no_flash $flash_only $*" >> "${L4T_STANDIN_LOG:-/dev/null}"

# "NAME FILE" for each partition of the substituted layout that has a file.
layout_files() {
    awk '/<partition /{ match($0, /name="[^"]*"/); n = substr($0, RSTART + 6, RLENGTH - 7); f = "" }
         /<filename>/{ f = $2 }
         /<\/partition>/{ if (f != "") print n, f }' "$l4t/bootloader/flash.xml"
}

package() { # LOCATION EXT
    local dest="$images/$1" ext=$2 i=0 name file bl="$l4t/bootloader"
    mkdir -p "$dest"
    rm -f "$dest/flash.cfg" "$dest/flash.idx"
    while read -r name file; do
        local size=0
        [ -f "$bl/$file" ] && size=$(stat -c %s "$bl/$file")
        echo "$i, 3:0:$name, 1048576, 33554432, $file, $size, 0" >> "$dest/flash.idx"
        i=$((i + 1))
        case "$name" in
            APP|APP_b) ;;
            *)
                [ -f "$bl/$file" ] && cp "$bl/$file" "$dest/$file"
                continue ;;
        esac
        local stage
        stage=$(mktemp -d)
        case "${L4T_STANDIN_RELEASE:-r36}:$sparse" in
            r36:0) raw_tree "$bl/$file.raw" "$stage"
                   tar --xattrs -cpf "$dest/$file" --numeric-owner -C "$stage" . ;;
            r36:1) cp "$bl/$file" "$dest/$file" ;;
            r38:0) raw_tree "$bl/$file.raw" "$stage"
                   tar --xattrs -cp --numeric-owner -C "$stage" . | zstd -q -c > "$dest/$file" ;;
            r38:1) zstd -q -c "$bl/$file.raw" > "$dest/$file" ;;
        esac
        rm -rf "$stage"
        sha1sum "$dest/$file" | cut -f 1 -d ' ' > "$dest/$file.sha1sum"
        echo "$name$ext=$file" >> "$dest/flash.cfg"
    done < <(layout_files)
    printf 'external_device=%s\nCHIPID=0x23\n' "$external_device" >> "$dest/flash.cfg"
}

# The tree inside an ext4 image, as `mount -o loop` shows it. Without root
# there is no mount (and debugfs rdump loses owners), so the tree the
# stand-in flash.sh put in the image is rebuilt the same way: rootfs/ (only
# boot/ for ROOTFS_ENC's system_boot.img), its xattrs, and the image's own
# extlinux.conf.
raw_tree() { # RAW DEST
    local what=.
    case "$1" in */system_boot.img*) what=./boot ;; esac
    tar --xattrs -C "$l4t/rootfs" -cf - "$what" | tar --xattrs -C "$2" -xpf -
    mkdir -p "$2/boot/extlinux"
    debugfs -R "cat /boot/extlinux/extlinux.conf" "$1" 2> /dev/null > "$2/boot/extlinux/extlinux.conf"
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

flash_device() { # DEVICE_DIR
    local device=$1 flashed=0 loc cfg var image name file
    mkdir -p "$device"
    for loc in internal external; do
        cfg="$images/$loc/flash.cfg"
        [ -f "$cfg" ] || continue
        local ext=""
        [ "$loc" = external ] && ext=_ext
        # shellcheck disable=SC1090
        source "$cfg"
        while read -r _ part _ _ file size _; do
            name=${part##*:}
            name=${name%,}
            file=${file%,}
            size=${size%,}
            case "$name" in
                APP|APP_b)
                    var=$name$ext
                    [ -n "${!var}" ] || continue
                    image="$images/$loc/${!var}"
                    [ -f "$image" ] || { echo "APP image $image is not found !!!" >&2; exit 1; }
                    [ -f "$image.sha1sum" ] || { echo "Sha1 checksum file $image.sha1sum is not found !!!" >&2; exit 1; }
                    if [ "$(sha1sum "$image" | cut -d' ' -f1)" != "$(cat "$image.sha1sum")" ]; then
                        echo "sha1 checksum of $image does not match $image.sha1sum" >&2; exit 1
                    fi
                    write_app "$image" "$device/$loc-$var"
                    flashed=$((flashed + 1)) ;;
                *)
                    if [ "$(head -c4 "$images/$loc/$file" | od -An -tx1 | tr -d ' \n')" = 3aff26ed ]; then
                        simg2img "$images/$loc/$file" "$device/$loc-$name.img"
                    else
                        head -c "$size" "$images/$loc/$file" > "$device/$loc-$name.img"
                    fi ;;
            esac
        done < "$images/$loc/flash.idx"
        unset APP APP_b APP_ext APP_b_ext
    done
    [ "$flashed" -gt 0 ] || { echo "nothing to flash in $images" >&2; exit 1; }
    [ "${L4T_STANDIN_FAIL:-0}" = 1 ] && { echo "l4t_initrd_flash.sh stand-in: the device stopped answering" >&2; exit 1; }
    return 0
}

if [ "$flash_only" = 0 ]; then
    if [ "$external_only" = 0 ]; then
        "$l4t/flash.sh" --no-flash --sign "$board" "$rootdev"
        package internal ""
    fi
    if [ -n "$external_device" ]; then
        # The real call adds -c <the external layout>; the stand-in's
        # default layout has the same APP partitions.
        "$l4t/flash.sh" --no-flash --sign --external-device "$board" external
        package external _ext
    fi
    echo "Success"
fi
[ "$no_flash" = 1 ] && exit 0

devpaths=()
for p in ${L4T_STANDIN_RCM:-1-1}; do
    [ -n "$usb_instance" ] && [ "$usb_instance" != "$p" ] && continue
    devpaths+=("$p")
done
[ "${#devpaths[@]}" -gt 0 ] || { echo "No devices to flash" >&2; exit 1; }
device=${L4T_STANDIN_DEVICE:?}
if [ "$massflash" = 0 ]; then
    if [ "$flash_only" = 0 ] && [ "${#devpaths[@]}" -gt 1 ]; then
        echo "Error, too many devices in RCM mode" >&2; exit 1
    fi
    flash_device "$device"
else
    max=${max_massflash:-10}
    [ "${#devpaths[@]}" -le "$max" ] || { echo "Too many devices in RCM mode" >&2; exit 1; }
    for p in "${devpaths[@]}"; do
        flash_device "$device/$p"
    done
fi
echo "Flash is successful"
