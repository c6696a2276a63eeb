# imprint.bbclass: after the image is built, write one credentialed copy of
# the ext4 (and meta-tegra ext4.simg) image per serial into
# ${IMGDEPLOYDIR}/per-serial, with a manifest, and verify each.
#
#   INHERIT += "imprint"          (or inherit imprint in the image recipe)
#   IMPRINT_SERIALS = "/srv/factory/serials-batch-17.txt"
#   IMPRINT_API_URL = "https://admin.example"
#   IMPRINT_OWNER = "azaion"
#   # the API token comes from the environment, never from the metadata:
#   BB_ENV_PASSTHROUGH_ADDITIONS += "IMPRINT_API_TOKEN"
#
# imprint must be on the build host's PATH (cargo install --path imprint, or a
# native recipe). It runs as the build user: no root and no mounting.

IMPRINT_SERIALS ??= ""
IMPRINT_API_URL ??= ""
IMPRINT_OWNER ??= "azaion"
IMPRINT_IMAGE_TYPES ??= "ext4 ext4.simg"

imprint_per_serial() {
    if [ -z "${IMPRINT_SERIALS}" ]; then
        bbnote "imprint: IMPRINT_SERIALS is empty, nothing to do"
        return 0
    fi
    out="${IMGDEPLOYDIR}/per-serial"
    mkdir -p "$out"
    for type in ${IMPRINT_IMAGE_TYPES}; do
        base="${IMGDEPLOYDIR}/${IMAGE_NAME}${IMAGE_NAME_SUFFIX}.$type"
        [ -f "$base" ] || continue
        imprint provision --quiet --serials "${IMPRINT_SERIALS}" --image "$base" \
            --output "$out/" --owner "${IMPRINT_OWNER}" --api-url "${IMPRINT_API_URL}" \
            --skip-existing
        grep -v '^[[:space:]]*\(#\|$\)' "${IMPRINT_SERIALS}" | sed 's/[[:space:]]*#.*//' |
        while read -r serial; do
            imprint verify "$out/$serial-$(basename "$base")" --serial "$serial" \
                --owner "${IMPRINT_OWNER}" > /dev/null || bbfatal "imprint: $serial does not verify"
        done
    done
}

IMAGE_POSTPROCESS_COMMAND:append = " imprint_per_serial; "
