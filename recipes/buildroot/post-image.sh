#!/bin/sh
# Buildroot post-image script: one credentialed copy of every root
# filesystem image per serial, all of a serial's copies with one password
# and one account call.
#
#   BR2_ROOTFS_POST_IMAGE_SCRIPT="board/mycompany/genimage.sh board/azaion/post-image.sh"
#
# Buildroot runs the scripts in order with the images directory
# ($BINARIES_DIR) as $1; list this one after genimage so that sdcard.img
# exists. Images taken from $1: rootfs.tar, rootfs.tar.{gz,bz2,xz,zst},
# rootfs.ext2/ext3/ext4 (Buildroot's rootfs.ext4 is a symlink to
# rootfs.ext2: taken once) and sdcard.img. In sdcard.img every rootfs slot
# is stamped (`--partition all-rootfs`): the one ext partition holding /etc,
# or both of an A/B layout (genimage's rootfsA and rootfsB, MBR or GPT),
# each with the same credentials in the one per-serial copy, and each is
# verified.
#
# Environment (set in the build's environment or a wrapper):
#   IMPRINT_SERIALS     file of serials, one a line (required)
#   IMPRINT_API_URL     admin API base URL (required unless IMPRINT_OFFLINE_PASSWORD_FILE)
#   IMPRINT_API_TOKEN_FILE  file holding the API token (or IMPRINT_API_TOKEN in the environment)
#   IMPRINT_OWNER       owner of device.conf in the image (default: azaion)
#   IMPRINT_OFFLINE_PASSWORD_FILE  for test builds only: no API call, this password
#
# Writes $1/per-serial/<SERIAL>-<image> (+ .sha256) and manifest.json with
# --skip-existing: a rebuild keeps the outputs made from the same images and
# rebuilds the others from the new ones, each device keeping its password.
# Fails unless every serial has every image, each verified.
set -eu

images=${1:?Buildroot passes the images directory as the first argument}
serials=${IMPRINT_SERIALS:?set IMPRINT_SERIALS to a file of serials}
owner=${IMPRINT_OWNER:-azaion}

set --
seen= names=
for name in rootfs.tar rootfs.tar.gz rootfs.tar.bz2 rootfs.tar.xz rootfs.tar.zst \
    rootfs.ext2 rootfs.ext3 rootfs.ext4 sdcard.img; do
    path="$images/$name"
    [ -f "$path" ] || continue
    # rootfs.ext4 -> rootfs.ext2: the same image under two names.
    real=$(readlink -f "$path")
    case " $seen " in *" $real "*) continue ;; esac
    seen="$seen $real"
    names="$names $name"
    set -- "$@" --image "$path"
done
[ $# -gt 0 ] || { echo "post-image: no rootfs.tar*, rootfs.ext2/3/4 or sdcard.img in $images" >&2; exit 1; }
count=$(( $# / 2 ))

out="$images/per-serial"
if [ -n "${IMPRINT_OFFLINE_PASSWORD_FILE:-}" ]; then
    set -- "$@" --offline --password-file "$IMPRINT_OFFLINE_PASSWORD_FILE"
else
    set -- "$@" --api-url "${IMPRINT_API_URL:?set IMPRINT_API_URL}"
    if [ -n "${IMPRINT_API_TOKEN_FILE:-}" ]; then
        set -- "$@" --api-token-file "$IMPRINT_API_TOKEN_FILE"
    fi
fi
# all-rootfs: every rootfs slot of sdcard.img; the other images have one.
imprint provision --serials "$serials" "$@" --output "$out/" --owner "$owner" --skip-existing \
    --partition all-rootfs

listed=$(grep -v '^[[:space:]]*\(#\|$\)' "$serials" | sed 's/[[:space:]]*#.*//')
expected=0 found=0
for serial in $listed; do
    for name in $names; do
        imprint verify "$out/$serial-$name" --serial "$serial" --owner "$owner" \
            --partition all-rootfs >/dev/null ||
            { echo "post-image: $out/$serial-$name does not verify" >&2; exit 1; }
    done
    expected=$((expected + count))
    found=$((found + $(grep -c "\"serial\": \"$serial\"" "$out/manifest.json" || true)))
done
if [ "$found" -ne "$expected" ]; then
    echo "post-image: manifest.json lists $found images, expected $expected ($count per serial)" >&2
    exit 1
fi
echo "post-image: $found images in $out"
