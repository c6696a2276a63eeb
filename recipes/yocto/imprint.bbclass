# imprint.bbclass: after an image is built, one credentialed copy of its
# root filesystem image(s) per serial, with a manifest, each verified, and
# with meta-tegra a per-serial tegraflash package that flashes it.
#
# Copy this file to your layer's classes/ (or classes-recipe/) and either
# inherit it in the image recipe:
#
#   inherit imprint
#
# or, in local.conf, add it to every image recipe of the build through
# OE-core's IMAGE_CLASSES (image.bbclass inherits ${IMAGE_CLASSES}):
#
#   IMAGE_CLASSES += "imprint"
#   # which images to stamp (meta-tegra's initramfs images are image
#   # recipes too); empty: every image recipe that inherits the class
#   IMPRINT_IMAGES = "azaion-image"
#   # imprint runs from the build host (cargo install, or the .deb):
#   HOSTTOOLS += "imprint"
#   IMPRINT_SERIALS = "/srv/factory/serials-batch-17.txt"
#   IMPRINT_API_URL = "https://admin.example"
#   IMPRINT_API_TOKEN_FILE = "/srv/factory/imprint-token"
#   IMPRINT_OWNER = "azaion"
#
# Only image recipes get a do_imprint task: a recipe that does not inherit
# OE-core's image class (busybox, the kernel, ...) is left as it was, even
# with a global INHERIT += "imprint", and a non-image recipe that inherits
# the class itself is refused at parse time.
#
# The API token stays in its file: imprint reads it (--api-token-file). It
# is never a BitBake variable or exported (an exported value lands in the
# task's temp/run.do_imprint.* script and in the signature data).
#
# do_imprint runs after do_image_complete, so it sees the images under their
# stable ${IMAGE_LINK_NAME} names (IMAGE_NAME carries DATETIME), and after
# meta-tegra's tegraflash package was made: the package is copied per
# serial with the stamped image swapped in under the name its flash layout
# reads (${IMAGE_BASENAME}.${IMAGE_TEGRAFLASH_FS_TYPE}). Outputs go to
# ${IMPRINT_OUTDIR}, outside the deploy directory and sstate: they hold
# passwords, and must never be shared through an sstate mirror.
#
# IMPRINT_IMAGE_TYPES defaults to the type meta-tegra packs
# (IMAGE_TEGRAFLASH_FS_TYPE: ext4 on most branches, ext4.simg on master
# for non-T234), else ext4; every type listed must exist, and all of a
# serial's images get one password and one account call.

IMPRINT_SERIALS ??= ""
IMPRINT_IMAGES ??= ""
IMPRINT_API_URL ??= ""
IMPRINT_API_TOKEN_FILE ??= ""
IMPRINT_OWNER ??= "azaion"
IMPRINT_IMAGE_TYPES ??= "${@d.getVar('IMAGE_TEGRAFLASH_FS_TYPE') or 'ext4'}"
IMPRINT_OUTDIR ??= "${TOPDIR}/imprint/${IMAGE_LINK_NAME}"
# The tegraflash package to copy per serial, if IMAGE_FSTYPES makes one:
# tegraflash.tar.gz (type "tegraflash", scarthgap and older, with
# TEGRAFLASH_PACKAGE_FORMAT = "tar") or tegraflash-tar.zst (master).
IMPRINT_TEGRAFLASH_PKG ??= "${@' '.join('tegraflash.tar.gz' if t == 'tegraflash' else t for t in (d.getVar('IMAGE_FSTYPES') or '').split() if t.startswith('tegraflash'))}"

imprint_images() {
    out="${IMPRINT_OUTDIR}"
    mkdir -p "$out"
    set --
    for type in ${IMPRINT_IMAGE_TYPES}; do
        base="${DEPLOY_DIR_IMAGE}/${IMAGE_LINK_NAME}.$type"
        [ -f "$base" ] || bbfatal "imprint: $base does not exist (IMPRINT_IMAGE_TYPES = \"${IMPRINT_IMAGE_TYPES}\"; IMAGE_FSTYPES = \"${IMAGE_FSTYPES}\"; IMPRINT_IMAGES names the images to stamp)"
        set -- "$@" --image "$base"
    done
    [ $# -gt 0 ] || bbfatal "imprint: IMPRINT_IMAGE_TYPES is empty"
    if [ -n "${IMPRINT_API_TOKEN_FILE}" ]; then
        set -- "$@" --api-token-file "${IMPRINT_API_TOKEN_FILE}"
    fi
    imprint provision --quiet --serials "${IMPRINT_SERIALS}" "$@" --output "$out/" \
        --owner "${IMPRINT_OWNER}" --api-url "${IMPRINT_API_URL}" --skip-existing ||
        bbfatal "imprint: provisioning failed (see the lines above and $out/manifest.json)"
    stamped=0
    for serial in $(grep -v '^[[:space:]]*\(#\|$\)' "${IMPRINT_SERIALS}" | sed 's/[[:space:]]*#.*//'); do
        for type in ${IMPRINT_IMAGE_TYPES}; do
            image="$out/$serial-${IMAGE_LINK_NAME}.$type"
            imprint verify "$image" --serial "$serial" --owner "${IMPRINT_OWNER}" > /dev/null ||
                bbfatal "imprint: $image does not verify"
            stamped=$(expr $stamped + 1)
        done
        for pkg in ${IMPRINT_TEGRAFLASH_PKG}; do
            imprint_tegraflash_package "$serial" "${DEPLOY_DIR_IMAGE}/${IMAGE_LINK_NAME}.$pkg" "$out"
        done
    done
    [ "$stamped" -gt 0 ] || bbfatal "imprint: no image was stamped (is ${IMPRINT_SERIALS} empty?)"
    bbnote "imprint: $stamped images in $out"
}

# A copy of the tegraflash package for one serial: the rootfs image the
# package's flash scripts read, replaced with the serial's stamped image.
imprint_tegraflash_package() {
    serial="$1"
    pkg="$2"
    out="$3"
    fs_type="${IMAGE_TEGRAFLASH_FS_TYPE}"
    [ -f "$pkg" ] || bbfatal "imprint: $pkg does not exist"
    [ -f "$out/$serial-${IMAGE_LINK_NAME}.$fs_type" ] ||
        bbfatal "imprint: add $fs_type (IMAGE_TEGRAFLASH_FS_TYPE) to IMPRINT_IMAGE_TYPES for per-serial tegraflash packages"
    work="$out/.tegraflash-$serial"
    pack="$out/$serial-${IMAGE_LINK_NAME}.tegraflash.tar"
    rm -rf "$work" "$pack.tmp"
    # The copy holds the serial's password: the directory is 0700 and the
    # image 0600 (install, not cp, which would keep the 0644 of the file
    # it replaces), and it is removed whatever fails (one && chain: under
    # BitBake's set -e a failed step would otherwise skip the cleanup).
    if ! (umask 077 && mkdir -m 0700 "$work" && tar -xf "$pkg" -C "$work" &&
        [ -f "$work/${IMAGE_BASENAME}.$fs_type" ] &&
        install -m 0600 "$out/$serial-${IMAGE_LINK_NAME}.$fs_type" "$work/${IMAGE_BASENAME}.$fs_type" &&
        tar --sparse --numeric-owner -cf "$pack.tmp" -C "$work" . &&
        mv -fT "$pack.tmp" "$pack"); then
        rm -rf "$work" "$pack.tmp"
        bbfatal "imprint: cannot make $pack from $pkg (see the lines above; is ${IMAGE_BASENAME}.$fs_type in it?)"
    fi
    rm -rf "$work"
}

python do_imprint() {
    if not d.getVar('IMPRINT_SERIALS'):
        bb.note("imprint: IMPRINT_SERIALS is empty, nothing to do")
        return
    if not d.getVar('IMPRINT_API_URL'):
        bb.fatal("imprint: set IMPRINT_API_URL")
    bb.build.exec_func('imprint_images', d)
}
# The task is added here, per recipe, and only to image recipes: a static
# addtask in a class that is inherited globally would put do_imprint
# before do_build in every recipe of the build.
python __anonymous() {
    pn = d.getVar('PN')
    if not bb.data.inherits_class('image', d):
        if 'imprint' in (d.getVar('INHERIT') or '').split():
            return
        bb.fatal("imprint: %s is not an image recipe (it does not inherit image): "
                 "inherit imprint in an image recipe, or add it to IMAGE_CLASSES in local.conf" % pn)
    images = (d.getVar('IMPRINT_IMAGES') or '').split()
    if images and pn not in images:
        return
    bb.build.addtask('do_imprint', 'do_build', 'do_image_complete', d)
}
# The admin API is a network call; BitBake gives tasks no network otherwise.
do_imprint[network] = "1"
# Rerun when the serials file changes, not only when its name does.
do_imprint[file-checksums] += "${@'${IMPRINT_SERIALS}:True' if d.getVar('IMPRINT_SERIALS') else ''}"
do_imprint[vardeps] += "IMPRINT_SERIALS IMPRINT_API_URL IMPRINT_OWNER IMPRINT_IMAGE_TYPES IMPRINT_TEGRAFLASH_PKG"
