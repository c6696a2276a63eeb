#!/bin/sh
# Buildroot post-image script: one credentialed rootfs image per serial.
#
#   BR2_ROOTFS_POST_IMAGE_SCRIPT="board/azaion/post-image.sh"
#   BR2_ROOTFS_POST_SCRIPT_ARGS=""       # Buildroot passes the images dir as $1
#
# Environment (set in the build's environment or a wrapper):
#   IMPRINT_SERIALS     file of serials, one a line (required)
#   IMPRINT_API_URL     admin API base URL (required unless IMPRINT_OFFLINE_PASSWORD_FILE)
#   IMPRINT_API_TOKEN   bearer token (read by imprint from the environment)
#   IMPRINT_OWNER       owner of device.conf in the image (default: azaion)
#   IMPRINT_OFFLINE_PASSWORD_FILE  for test builds only: no API call, this password
#
# Writes $1/per-serial/<SERIAL>-rootfs.ext4 (+ .sha256) and manifest.json,
# then verifies every image.
set -eu

images=${1:?Buildroot passes the images directory as the first argument}
serials=${IMPRINT_SERIALS:?set IMPRINT_SERIALS to a file of serials}
owner=${IMPRINT_OWNER:-azaion}
base=
for name in rootfs.ext4 rootfs.ext2 rootfs.tar.gz rootfs.tar; do
    if [ -f "$images/$name" ]; then base="$images/$name"; break; fi
done
[ -n "$base" ] || { echo "post-image: no rootfs.ext4/ext2/tar(.gz) in $images" >&2; exit 1; }

out="$images/per-serial"
mkdir -p "$out"
if [ -n "${IMPRINT_OFFLINE_PASSWORD_FILE:-}" ]; then
    set -- --offline --password-file "$IMPRINT_OFFLINE_PASSWORD_FILE"
else
    set -- --api-url "${IMPRINT_API_URL:?set IMPRINT_API_URL}"
fi
imprint provision --serials "$serials" --image "$base" --output "$out/" \
    --owner "$owner" --skip-existing "$@"

grep -v '^[[:space:]]*\(#\|$\)' "$serials" | sed 's/[[:space:]]*#.*//' | while read -r serial; do
    imprint verify "$out/$serial-$(basename "$base")" --serial "$serial" --owner "$owner" >/dev/null ||
        { echo "post-image: $serial does not verify" >&2; exit 1; }
done
echo "post-image: $(grep -c '"serial"' "$out/manifest.json") images in $out"
