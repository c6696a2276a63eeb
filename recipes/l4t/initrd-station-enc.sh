# shellcheck shell=bash
# ROOTFS_ENC=1 for initrd-station.sh (which sources this file; keep the
# two side by side), internal storage, one device at a time.
#
#   sudo [ROOTFS_AB=1] ROOTFS_ENC=1 initrd-station.sh --prepare [FLASH OPTIONS] BOARD internal
#   sudo [ROOTFS_AB=1] ROOTFS_ENC=1 ECID=0x... ENC_RFS_KEY=/root/ekb.key IMPRINT_API_URL=... \
#     initrd-station.sh SERIAL [FLASH OPTIONS] BOARD internal
#
# How r35.3.1's initrd flash handles it: `l4t_initrd_flash.sh --no-flash`
# runs `flash.sh --no-flash --sign` with ROOTFS_ENC=1 in the environment
# (l4t_create_images_for_kernel_flash.sh:414-460; README_initrd_flash.txt
# Workflow 11, examples 3-4), which builds system_boot.img (APP) and the
# LUKS2 container system_root_encrypted.img (APP_ENC; with ROOTFS_AB=1
# also system_boot.img_b and system_root_encrypted.img_b) for the ECID of
# the device in recovery mode, as station-enc.sh describes. Packaging puts
# the boot image in images/internal/ as the APP image of flash.cfg
# (:329-362) and copies the container as it is, named by flash.idx
# (:364-389); `--flash-only` writes it with simg2img when it is sparse (as
# flash.sh builds it), else the flash.idx size of its bytes
# (l4t_flash_from_kernel.sh:443-520). No step derives the passphrase
# again: the container in images/ opens only on the chip it was built for.
#
# So --prepare runs the flash tool's --no-flash, then builds, for each
# slot, the plain root filesystem its container holds (enc-base.sh, as
# flash.sh fills it), in $IMPRINT_STATION_DIR (0700), of the form of the
# container in images/ (Android sparse when it is, with img2simg) and
# sized as it is; it keeps the container's UUID file from bootloader/
# (the one the boot image's command line boots) and the container itself.
# Per device one `imprint provision --luks-encrypt` call builds every
# slot's container (one account call, one password, each container under
# its UUID and passphrase), each is verified with the device's key, put in
# images/internal/ (0600) under the name flash.idx flashes, verified in
# place, and `--flash-only` flashes; pass or fail, the containers from
# --prepare are put back.
#
# Refused: an external device with ROOTFS_ENC=1 (flash_l4t_nvme_rootfs_enc.xml,
# system_root_encrypted.img_ext under l4t-rootfs-uuid.txt_ext_enc,
# flash.sh:2395-2405: not built here yet); --massflash (initrd-station.sh:
# one container opens on one chip only).

ab=0
[ "${ROOTFS_AB:-}" = 1 ] && ab=1
for arg in "$@"; do
    case "$arg" in
        --external-device|--external-only|--direct)
            die "ROOTFS_ENC=1 with $arg: the external device's encrypted rootfs (system_root_encrypted.img_ext, its UUID in l4t-rootfs-uuid.txt_ext_enc) is not served by this script; it serves internal storage. Flash the external device with the staging flow (sample-rootfs.sh --rootfs-dir rootfs SERIAL -- ./tools/kernel_flash/l4t_initrd_flash.sh ...), which builds the container from the stamped rootfs/; nothing was changed." ;;
    esac
done
idx=$images/internal/flash.idx
kept=$station/internal

# The encrypted slots: "CONTAINER_PARTITION FILE UUID_FILE BOOTPART_UUID_FILE"
# (flash.sh's names and UUID files, see station-enc.sh).
slots="APP_ENC system_root_encrypted.img bootloader/l4t-rootfs-uuid.txt_enc bootloader/l4t-bootpart-uuid.txt"
[ "$ab" = 0 ] ||
    slots+=$'\n'"APP_ENC_b system_root_encrypted.img_b bootloader/l4t-rootfs-uuid.txt_b_enc bootloader/l4t-bootpart-uuid.txt_b"

# The rootfs partitions images/internal flashes must be the encrypted
# layout's, with as many slots as ROOTFS_AB says: APP (APP_b) the boot
# image(s) of flash.cfg, APP_ENC (APP_ENC_b) the containers of flash.idx.
# WHEN says what to do when the slots differ from ROOTFS_AB.
enc_images_ok() {
    local when=$1 name file names="" cfg=$images/internal/flash.cfg
    [ -f "$idx" ] && [ -f "$cfg" ] || die "no $idx and $cfg: the flash tool's --no-flash did not package images/internal"
    while read -r name file; do
        case "$name:$file" in
            APP:*|APP_b:*)
                grep -qx "$name=system_boot.img${name#APP}" "$cfg" ||
                    die "$cfg does not flash system_boot.img${name#APP} (the /boot of the encrypted layout) to $name: is it ROOTFS_ENC=1's layout? Run --prepare again."
                names+="$name " ;;
            APP_ENC:system_root_encrypted.img|APP_ENC_b:system_root_encrypted.img_b) names+="$name " ;;
            *) die "$idx flashes '$file' to $name; with ROOTFS_ENC=1 this script serves APP, APP_ENC (and with ROOTFS_AB=1 APP_b, APP_ENC_b) with the files flash.sh builds only. Stamp that image yourself (imprint provision --luks-encrypt) and check it with imprint verify before flashing." ;;
        esac
    done < <(awk -F, '{ n = $2; sub(/.*:/, "", n); f = $5; gsub(/ /, "", f); if (n ~ /^APP/) print n, (f == "" ? "-" : f) }' "$idx")
    names=$(printf '%s\n' $names | LC_ALL=C sort | tr '\n' ' ')
    case "$ab:$names" in
        "0:APP APP_ENC "|"1:APP APP_ENC APP_ENC_b APP_b ") ;;
        "0:APP APP_ENC APP_ENC_b APP_b ") die "images/internal has two encrypted rootfs slots (APP_ENC_b too): $when" ;;
        "1:APP APP_ENC ") die "ROOTFS_AB=1, but images/internal has one encrypted rootfs slot (no APP_ENC_b): $when" ;;
        *) die "$idx has not the APP and APP_ENC partitions (and APP_b, APP_ENC_b with ROOTFS_AB=1) of flash.sh's ROOTFS_ENC=1 layout; run --prepare again with ROOTFS_ENC=1" ;;
    esac
}

# shellcheck source=enc-base.sh
source "$(dirname "${BASH_SOURCE[0]}")/enc-base.sh"

if [ "$what" = --prepare ]; then
    rm -rf "$station"
    as_root "$flash_tool" --no-flash "$@"
    enc_images_ok "this board's layout does not match ROOTFS_AB=${ROOTFS_AB:-}. Set ROOTFS_AB as the board config expects it, and run --prepare again."
    mkdir -p -m 0700 "$kept"
    while read -r _ file uuid bootpart; do
        for f in "$images/internal/$file" "$uuid" "$bootpart"; do
            [ -f "$f" ] || die "the flash tool's --no-flash with ROOTFS_ENC=1 left no $f"
        done
        base=$kept/$file.base
        size=$(($(image_size "$images/internal/$file") - (16 << 20)))
        [ "$size" -gt 0 ] || die "$images/internal/$file is too small to hold a LUKS2 header and a filesystem"
        enc_base rootfs "$bootpart" "$ab" "$size" "$base" || die "could not build $base from rootfs/"
        # The container's form: --flash-only writes a raw one as the
        # flash.idx size of its bytes, which only flash.sh's own has.
        if [ "$(head -c4 "$images/internal/$file" | od -An -tx1 | tr -d ' \n')" = 3aff26ed ]; then
            command -v img2simg > /dev/null ||
                die "img2simg not found (Debian/Ubuntu: apt-get install android-sdk-libsparse-utils): the container in images/ is Android sparse, and its stand-in must be too"
            img2simg "$base" "$base.sparse" && mv "$base.sparse" "$base" || die "img2simg $base failed"
        fi
        cp -p "$uuid" "$base.uuid"
        cp -p "$images/internal/$file" "$kept/$file.orig"
        echo "initrd-station: built the plain root filesystem $base from rootfs/, kept $uuid as $base.uuid and $images/internal/$file as $kept/$file.orig"
    done <<< "$slots"
    sums=$(cd "$station" && find . -type f -printf '%P\n' | sort | xargs sha256sum --)
    echo "$sums" > "$station/SHA256SUMS"
    exit 0
fi

serial=$what
[ -f "$station/SHA256SUMS" ] && [ -d "$kept" ] ||
    die "no encrypted rootfs kept in $station; run ROOTFS_ENC=1 initrd-station.sh --prepare first"
(cd "$station" && sha256sum --quiet -c SHA256SUMS) ||
    die "what --prepare kept in $station changed; run ROOTFS_ENC=1 initrd-station.sh --prepare again"
if [ "$ab" = 1 ]; then
    enc_images_ok "--prepare ran without ROOTFS_AB=1, so slot B's container would be flashed without credentials, or not at all. Run ROOTFS_AB=1 ROOTFS_ENC=1 initrd-station.sh --prepare first."
else
    enc_images_ok "--prepare ran with ROOTFS_AB=1: set ROOTFS_AB=1 for each device too, or run --prepare again without it."
fi
while read -r name file _; do
    for f in "$kept/$file.base" "$kept/$file.base.uuid" "$kept/$file.orig"; do
        [ -f "$f" ] || die "no $f; run ROOTFS_ENC=1 initrd-station.sh --prepare again"
    done
    # images/ rebuilt since --prepare: its boot image may boot another UUID.
    cmp -s "$images/internal/$file" "$kept/$file.orig" ||
        die "$images/internal/$file ($name) is not the container --prepare kept: images/ was rebuilt, and its boot image may boot another UUID. Run ROOTFS_ENC=1 initrd-station.sh --prepare again"
done <<< "$slots"
[ -n "${ECID:-}" ] ||
    die "ROOTFS_ENC=1: set ECID to this device's chip ID (hex), as flash.sh reads it: the BR_CID line of 'tegrarcm_v2 --uid' with the device in recovery mode (flash.sh:662); each device's container opens only with its own. Nothing was changed."
[ -n "${ENC_RFS_KEY:-}" ] && [ -f "$ENC_RFS_KEY" ] ||
    die "ROOTFS_ENC=1: set ENC_RFS_KEY to the file with the EKB key fused in the devices (32 hex digits, the file flash.sh -i takes; a device with no key fused uses 32 zeros): the passphrase is derived from it. Nothing was changed."

work=$(mktemp -d "$station/work.XXXXXX")
# shellcheck source=enc-device.sh
source "$(dirname "${BASH_SOURCE[0]}")/enc-device.sh"
restore() {
    # Each step runs even when one before it fails (see initrd-station.sh).
    set +e
    enc_put_back "$images/internal" "$kept" .orig initrd-station
    rm -rf "$work"
}
trap restore EXIT

# shellcheck source=station-api.sh
source "$(dirname "${BASH_SOURCE[0]}")/station-api.sh"
enc_stamp "$kept" "$work" "$images/internal"
as_root "$flash_tool" --flash-only "$@"
echo "initrd-station: $serial flashed ($(cut -d' ' -f1 <<< "$slots" | tr '\n' ' ' | sed 's/ $//'), encrypted for ECID $ECID)"
