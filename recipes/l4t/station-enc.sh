# shellcheck shell=bash
# ROOTFS_ENC=1 for station.sh (which sources this file; keep the two side
# by side). flash.sh then flashes system_boot.img (APP: /boot only) and the
# LUKS2 container system_root_encrypted.img (APP_ENC: the rest of the
# rootfs), whose passphrase is derived from the chip's EKB key and ECID
# (build_enc_root_fsimg, tools/disk_encryption/disk_encryption_helper.func
# 503-630): one container per device, so it is built per device here, by
# `imprint provision --luks-encrypt`, one device at a time.
#
#   sudo ROOTFS_ENC=1 station.sh --prepare BOARD ROOTDEV
#   sudo ROOTFS_ENC=1 ECID=0x... ENC_RFS_KEY=/root/ekb.key IMPRINT_API_URL=... \
#     station.sh SERIAL BOARD ROOTDEV
#
# --prepare runs `flash.sh --no-flash` (system_boot.img, the UUID files,
# the layout), then builds the plain root filesystem the container holds,
# bootloader/system_root_encrypted.img.base, from rootfs/ as
# build_enc_root_fsimg fills it (helper.func 590-600: rootfs/ without
# boot, /etc/fstab's last line replaced by the crypt_root line, /boot
# mounted by the APP partition's UUID from l4t-bootpart-uuid.txt), sized
# so that the container (16 MiB of LUKS2 header, then the filesystem) is
# the size of the one flash.sh built. It keeps l4t-rootfs-uuid.txt_enc,
# the container's UUID (root=UUID= on the kernel command line,
# flash.sh:2405-2412), as <base>.uuid, and flash.sh's own
# system_root_encrypted.img as <base>.orig.
# (imprint can also build each container straight from a tarball of
# rootfs/, without root: --luks-size and --luks-boot-partuuid-file; the
# base is built once here instead because stamping it per device is
# several times faster than making the filesystem from the archive again.)
#
# Per device: ECID (the chip's, as flash.sh reads it:
# `tegrarcm_v2 --uid`, the BR_CID line, flash.sh:662) and ENC_RFS_KEY (the
# EKB key file flash.sh -i reads, flash.sh:2005-2012) give the passphrase;
# imprint builds the container into a 0700 directory in bootloader/,
# verifies it with that key, puts it in place (mode 0600) and
# `flash.sh -r` flashes it as it is. Pass or fail, on exit the container
# is removed and flash.sh's one put back.

enc_file=system_root_encrypted.img
enc_uuid=bootloader/l4t-rootfs-uuid.txt_enc
saved_layout=bootloader/$enc_file.base.layout
base=bootloader/$enc_file.base

# The partitions this serves: APP with system_boot.img (no credentials:
# /boot only, flashed as flash.sh built it) and APP_ENC with the container.
enc_layout_ok() {
    local layout=$1 name file seen=""
    while read -r name file; do
        case "$name:$file" in
            APP:system_boot.img) seen+=A ;;
            APP_ENC:$enc_file) seen+=E ;;
            *) die "$layout flashes '$file' to $name; with ROOTFS_ENC=1 this script serves APP (system_boot.img) and APP_ENC ($enc_file) only. Stamp that image yourself (imprint provision --luks-encrypt) and check it with imprint verify before flashing." ;;
        esac
    done < <(app_partitions "$layout")
    [ "$seen" = AE ] || die "$layout has no APP (system_boot.img) and APP_ENC ($enc_file) pair: is it flash.sh's ROOTFS_ENC=1 layout?"
}

# The bytes an image stands for: Android sparse (block size at byte 12,
# block count at 16) or raw.
image_size() {
    if [ "$(head -c4 "$1" | od -An -tx1 | tr -d ' \n')" = 3aff26ed ]; then
        echo $(($(od -An -tu4 -j12 -N4 "$1") * $(od -An -tu4 -j16 -N4 "$1")))
    else
        stat -c %s "$1"
    fi
}

if [ "$what" = --prepare ]; then
    rm -f "$base"* bootloader/system.img.base* bootloader/system.img_b.base*
    as_root ./flash.sh --no-flash "$board" "$rootdev"
    [ -f bootloader/flash.xml ] || die "flash.sh left no bootloader/flash.xml to read the layout from"
    enc_layout_ok bootloader/flash.xml
    for f in bootloader/system_boot.img "bootloader/$enc_file" "$enc_uuid" bootloader/l4t-bootpart-uuid.txt; do
        [ -f "$f" ] || die "flash.sh --no-flash with ROOTFS_ENC=1 left no $f"
    done
    size=$(($(image_size "bootloader/$enc_file") - (16 << 20)))
    [ "$size" -gt 0 ] || die "bootloader/$enc_file is too small to hold a LUKS2 header and a filesystem"
    stage=$(mktemp -d)
    trap 'rm -rf "$stage"' EXIT
    # As build_enc_root_fsimg (helper.func 590-600), as root.
    (cd rootfs && tar --exclude=boot -cf - -- *) | as_root tar -C "$stage" -xpf -
    as_root bash -c 'f=$1/etc/fstab; if [ -f "$f" ]; then head -n -1 "$f" > "$f.tmp"; mv "$f.tmp" "$f"; else mkdir -p "${f%/*}"; fi
        { echo "/dev/mapper/crypt_root / ext4 defaults 0 1"; echo "PARTUUID=$2 /boot ext4 defaults 0 1"; } >> "$f"' \
        _ "$stage" "$(head -n1 bootloader/l4t-bootpart-uuid.txt)"
    as_root mke2fs -q -t ext4 -d "$stage" "$base" "$((size / 1024))k"
    cp -p "$enc_uuid" "$base.uuid"
    cp -p "bootloader/$enc_file" "$base.orig"
    echo "station: built the plain root filesystem $base from rootfs/, kept $enc_uuid as $base.uuid and bootloader/$enc_file as $base.orig"
    cp -p bootloader/flash.xml "$saved_layout"
    sha256sum "$board.conf" > "$saved_layout.conf.sha256"
    exit 0
fi

serial=$what
[ -f "$saved_layout" ] || die "no $saved_layout: run ROOTFS_ENC=1 station.sh --prepare $board $rootdev first"
enc_layout_ok "$saved_layout"
sha256sum --quiet -c "$saved_layout.conf.sha256" > /dev/null 2>&1 ||
    die "$board.conf is not the one --prepare read (another board, or it changed): flash.sh could flash another layout. Run ROOTFS_ENC=1 station.sh --prepare $board $rootdev again"
for f in "$base" "$base.uuid" "$base.orig" bootloader/system_boot.img; do
    [ -f "$f" ] || die "no $f; run ROOTFS_ENC=1 station.sh --prepare $board $rootdev again"
done
cmp -s "$enc_uuid" "$base.uuid" ||
    die "$enc_uuid is not the UUID --prepare kept ($base.uuid): the kernel command line in system_boot.img boots that one, so the device would not boot. Restore it, or run --prepare again"
[ -n "${ECID:-}" ] ||
    die "ROOTFS_ENC=1: set ECID to this device's chip ID (hex), as flash.sh reads it: the BR_CID line of 'tegrarcm_v2 --uid' with the device in recovery mode (flash.sh:662); each device's container opens only with its own. Nothing was changed."
[ -n "${ENC_RFS_KEY:-}" ] && [ -f "$ENC_RFS_KEY" ] ||
    die "ROOTFS_ENC=1: set ENC_RFS_KEY to the file with the EKB key fused in the devices (32 hex digits, the file flash.sh -i takes; a device with no key fused uses 32 zeros): the passphrase is derived from it. Nothing was changed."

work=$(mktemp -d bootloader/.station.XXXXXX)
restore() {
    # Each step runs even when one before it fails (see station.sh).
    set +e
    rm -f "bootloader/$enc_file"
    cp -p "$base.orig" "bootloader/$enc_file" ||
        echo "station: $base.orig could not be put back; run ROOTFS_ENC=1 station.sh --prepare again" >&2
    rm -rf "$work"
}
trap restore EXIT

# shellcheck source=station-api.sh
source "$(dirname "${BASH_SOURCE[0]}")/station-api.sh"
key=(--l4t-ekb-key "$ENC_RFS_KEY" --ecid "$ECID")
out=$work/$enc_file
imprint provision --serial "$serial" --image "$base" --output "$out" --owner "$owner" "${api[@]}" \
    --luks-encrypt --luks-uuid-file "$enc_uuid" "${key[@]}"
imprint verify "$out" --serial "$serial" --owner "$owner" "${key[@]}" > /dev/null ||
    die "$out does not verify"
chmod 0600 "$out"
rm -f "bootloader/$enc_file"
mv "$out" "bootloader/$enc_file"
# Right before flashing: the container in place opens with this device's
# passphrase and carries its credentials.
imprint verify "bootloader/$enc_file" --serial "$serial" --owner "$owner" "${key[@]}" > /dev/null ||
    die "bootloader/$enc_file (APP_ENC) does not carry $serial's credentials; not flashing"
# -r: flash the images as they are.
as_root ./flash.sh -r "$board" "$rootdev"
echo "station: $serial flashed (APP APP_ENC, encrypted for ECID $ECID)"
