# shellcheck shell=bash
# ROOTFS_ENC=1 for station.sh (which sources this file; keep the two side
# by side). flash.sh then flashes system_boot.img (APP: /boot only) and the
# LUKS2 container system_root_encrypted.img (APP_ENC: the rest of the
# rootfs), whose passphrase is derived from the chip's EKB key and ECID,
# with the container's UUID as context (build_enc_root_fsimg,
# tools/disk_encryption/disk_encryption_helper.func 503-630, the passphrase
# command at 537-548): one container per device, so it is built per device
# here, by `imprint provision --luks-encrypt`, one device at a time.
#
#   sudo [ROOTFS_AB=1] ROOTFS_ENC=1 station.sh --prepare BOARD ROOTDEV
#   sudo [ROOTFS_AB=1] ROOTFS_ENC=1 ECID=0x... ENC_RFS_KEY=/root/ekb.key IMPRINT_API_URL=... \
#     station.sh SERIAL BOARD ROOTDEV
#
# With ROOTFS_AB=1 too (the board configs then pick the A/B encrypted
# layout, e.g. p2972-0000.conf.common:261-265 and
# flash_t194_sdmmc_enc_rootfs_ab.xml:234-283) there are two slots, each a
# boot partition and a container: APP (system_boot.img) with APP_ENC
# (system_root_encrypted.img, UUID in l4t-rootfs-uuid.txt_enc), and APP_b
# (system_boot.img_b) with APP_ENC_b (system_root_encrypted.img_b, UUID in
# l4t-rootfs-uuid.txt_b_enc: rootuuid_restore "_enc" reads the _b file
# too, flash.sh:1045-1056, 2407; flash.sh:1277-1285 builds it with
# rootfsuuid_b_enc, so its passphrase has that UUID as context).
#
# --prepare runs `flash.sh --no-flash` (the boot images, the UUID files,
# the layout), then builds, for each slot, the plain root filesystem its
# container holds, bootloader/<container>.base, from rootfs/ as
# build_enc_root_fsimg fills it (helper.func 586-602: rootfs/ without
# boot, /etc/fstab's last line replaced by the crypt_root line, /boot
# mounted by the slot's APP partition UUID from l4t-bootpart-uuid.txt (_b
# for slot B, flash.sh:1283); with A/B also the other slot's container on
# /mnt/crypt_root_other), sized so that the container (16 MiB of LUKS2
# header, then the filesystem) is the size of the one flash.sh built. It
# keeps the slot's container UUID file (root=UUID= on that slot's kernel
# command line, flash.sh:2405-2412, 2711-2716) as <base>.uuid, and
# flash.sh's own container as <base>.orig.
# (imprint can also build a container straight from a tarball of rootfs/,
# without root: --luks-size and --luks-boot-partuuid-file; the base is
# built once here instead because stamping it per device is several times
# faster than making the filesystem from the archive again.)
#
# Per device: ECID (the chip's, as flash.sh reads it:
# `tegrarcm_v2 --uid`, the BR_CID line, flash.sh:662) and ENC_RFS_KEY (the
# EKB key file flash.sh -i reads, flash.sh:2005-2012) give the passphrase;
# one `imprint provision` call builds every slot's container (one account
# call, one password in A and B; each container under its own UUID, so
# each opens with its own passphrase) into a 0700 directory in
# bootloader/, each is verified with that key, put in place (mode 0600)
# and `flash.sh -r` flashes them as they are. Pass or fail, on exit the
# containers are removed and flash.sh's put back.

saved_layout=bootloader/system_root_encrypted.img.base.layout

# The encrypted slots: "CONTAINER_PARTITION FILE UUID_FILE BOOTPART_UUID_FILE"
# a line (flash.sh's names, flash_t194_sdmmc_enc_rootfs_ab.xml:234-283).
enc_slots() {
    echo "APP_ENC system_root_encrypted.img bootloader/l4t-rootfs-uuid.txt_enc bootloader/l4t-bootpart-uuid.txt"
    [ "$ab" = 0 ] ||
        echo "APP_ENC_b system_root_encrypted.img_b bootloader/l4t-rootfs-uuid.txt_b_enc bootloader/l4t-bootpart-uuid.txt_b"
}
slots=$(enc_slots)

# The partitions this serves: APP (APP_b) with system_boot.img(_b) (no
# credentials: /boot only, flashed as flash.sh built it) and APP_ENC
# (APP_ENC_b) with the containers. WHEN says what to do when the slots
# differ from ROOTFS_AB.
enc_layout_ok() {
    local layout=$1 when=$2 name file seen=""
    while read -r name file; do
        case "$name:$file" in
            APP:system_boot.img) seen+=A ;;
            APP_b:system_boot.img_b) seen+=B ;;
            APP_ENC:system_root_encrypted.img) seen+=E ;;
            APP_ENC_b:system_root_encrypted.img_b) seen+=F ;;
            *) die "$layout flashes '$file' to $name; with ROOTFS_ENC=1 this script serves APP and APP_ENC (system_boot.img, system_root_encrypted.img), and with ROOTFS_AB=1 APP_b and APP_ENC_b (the same with _b) only. Stamp that image yourself (imprint provision --luks-encrypt) and check it with imprint verify before flashing." ;;
        esac
    done < <(app_partitions "$layout")
    seen=$(grep -o . <<< "$seen" | sort | tr -d '\n')
    case "$ab:$seen" in
        0:AE|1:ABEF) ;;
        0:ABEF) die "$layout has two encrypted rootfs slots (APP_ENC and APP_ENC_b): $when" ;;
        1:AE) die "ROOTFS_AB=1, but $layout has one encrypted rootfs slot (no APP_ENC_b): $when" ;;
        *) die "$layout has not the APP/APP_ENC partitions (and APP_b/APP_ENC_b with ROOTFS_AB=1) of flash.sh's ROOTFS_ENC=1 layout: is it one?" ;;
    esac
}

# shellcheck source=enc-base.sh
source "$(dirname "${BASH_SOURCE[0]}")/enc-base.sh"

if [ "$what" = --prepare ]; then
    rm -f bootloader/system_root_encrypted.img.base* bootloader/system_root_encrypted.img_b.base* \
        bootloader/system.img.base* bootloader/system.img_b.base*
    as_root ./flash.sh --no-flash "$board" "$rootdev"
    [ -f bootloader/flash.xml ] || die "flash.sh left no bootloader/flash.xml to read the layout from"
    enc_layout_ok bootloader/flash.xml "this board's layout does not match ROOTFS_AB=${ROOTFS_AB:-}. Set ROOTFS_AB as the board config expects it (or use NVIDIA's layout), and run --prepare again."
    while read -r _ file uuid bootpart; do
        for f in "bootloader/${file/root_encrypted/boot}" "bootloader/$file" "$uuid" "$bootpart"; do
            [ -f "$f" ] || die "flash.sh --no-flash with ROOTFS_ENC=1 left no $f"
        done
        base=bootloader/$file.base
        size=$(($(image_size "bootloader/$file") - (16 << 20)))
        [ "$size" -gt 0 ] || die "bootloader/$file is too small to hold a LUKS2 header and a filesystem"
        enc_base rootfs "$bootpart" "$ab" "$size" "$base" ||
            die "could not build $base from rootfs/"
        cp -p "$uuid" "$base.uuid"
        cp -p "bootloader/$file" "$base.orig"
        echo "station: built the plain root filesystem $base from rootfs/, kept $uuid as $base.uuid and bootloader/$file as $base.orig"
    done <<< "$slots"
    cp -p bootloader/flash.xml "$saved_layout"
    sha256sum "$board.conf" > "$saved_layout.conf.sha256"
    exit 0
fi

serial=$what
[ -f "$saved_layout" ] || die "no $saved_layout: run ROOTFS_ENC=1 station.sh --prepare $board $rootdev first"
if [ "$ab" = 1 ]; then
    enc_layout_ok "$saved_layout" "--prepare ran without ROOTFS_AB=1, so flash.sh -r would flash slot B's container without credentials. Run ROOTFS_AB=1 ROOTFS_ENC=1 station.sh --prepare first."
else
    enc_layout_ok "$saved_layout" "--prepare ran with ROOTFS_AB=1: set ROOTFS_AB=1 for each device too, or run --prepare again without it."
fi
sha256sum --quiet -c "$saved_layout.conf.sha256" > /dev/null 2>&1 ||
    die "$board.conf is not the one --prepare read (another board, or it changed): flash.sh could flash another layout. Run ROOTFS_ENC=1 station.sh --prepare $board $rootdev again"
while read -r name file uuid _; do
    base=bootloader/$file.base
    for f in "$base" "$base.uuid" "$base.orig" "bootloader/${file/root_encrypted/boot}"; do
        [ -f "$f" ] || die "no $f; run ROOTFS_ENC=1 station.sh --prepare $board $rootdev again"
    done
    cmp -s "$uuid" "$base.uuid" ||
        die "$uuid is not the UUID --prepare kept ($base.uuid): the kernel command line in ${file/root_encrypted/boot} boots that one, so the device would not boot from $name. Restore it, or run --prepare again"
done <<< "$slots"
[ -n "${ECID:-}" ] ||
    die "ROOTFS_ENC=1: set ECID to this device's chip ID (hex), as flash.sh reads it: the BR_CID line of 'tegrarcm_v2 --uid' with the device in recovery mode (flash.sh:662); each device's container opens only with its own. Nothing was changed."
[ -n "${ENC_RFS_KEY:-}" ] && [ -f "$ENC_RFS_KEY" ] ||
    die "ROOTFS_ENC=1: set ENC_RFS_KEY to the file with the EKB key fused in the devices (32 hex digits, the file flash.sh -i takes; a device with no key fused uses 32 zeros): the passphrase is derived from it. Nothing was changed."

work=$(mktemp -d bootloader/.station.XXXXXX)
# shellcheck source=enc-device.sh
source "$(dirname "${BASH_SOURCE[0]}")/enc-device.sh"
restore() {
    # Each step runs even when one before it fails (see station.sh).
    set +e
    enc_put_back bootloader bootloader .base.orig station
    rm -rf "$work"
}
trap restore EXIT

# shellcheck source=station-api.sh
source "$(dirname "${BASH_SOURCE[0]}")/station-api.sh"
# The UUID files are the ones --prepare kept as FILE.base.uuid (compared
# above).
enc_stamp bootloader "$work" bootloader
# -r: flash the images as they are.
as_root ./flash.sh -r "$board" "$rootdev"
parts="APP APP_ENC"
[ "$ab" = 0 ] || parts="APP APP_b APP_ENC APP_ENC_b"
echo "station: $serial flashed ($parts, encrypted for ECID $ECID)"
