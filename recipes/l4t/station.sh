#!/bin/bash
# Flashing station for flash.sh (Jetson Xavier/TX2/Nano, and Orin boards
# flashed with flash.sh): one device at a time, each with its own
# credentials in every rootfs slot flash.sh writes. For Orin's initrd flash
# (l4t_initrd_flash.sh) use initrd-station.sh: that flow never reads
# bootloader/system.img.
#
#   cd Linux_for_Tegra
#   # once per release and board: build the images, keep them and their UUIDs
#   sudo [ROOTFS_AB=1] station.sh --prepare jetson-agx-xavier-devkit mmcblk0p1
#   # per device (the same ROOTFS_AB as --prepare)
#   sudo [ROOTFS_AB=1] IMPRINT_API_URL=https://admin.example IMPRINT_API_TOKEN_FILE=/root/token \
#     station.sh AZJN-0042 jetson-agx-xavier-devkit mmcblk0p1
#
# --prepare runs `flash.sh --no-flash BOARD ROOTDEV`, which builds
# bootloader/system.img from rootfs/ (create the device user first, e.g.
# tools/l4t_create_default_user.sh -u azaion) and, with ROOTFS_AB=1,
# bootloader/system.img_b for slot B. It then reads the layout flash.sh
# will flash, bootloader/flash.xml with its placeholders substituted, and
# keeps every rootfs image that layout writes: system.img (APP) as
# bootloader/system.img.base, system.img_b (APP_b) as
# bootloader/system.img_b.base, each with the UUID file it was built with
# (l4t-rootfs-uuid.txt, l4t-rootfs-uuid.txt_b) as <base>.uuid, and the
# layout as bootloader/system.img.base.layout (with the board config's
# digest: a changed config means another layout, and is refused until
# --prepare runs again). Each image's extlinux.conf
# boots root=PARTUUID=<its UUID>, and flash.sh gives APP and APP_b the UUIDs
# in those files, so image and file must match or the slot does not boot.
#
# Per device: one `imprint provision` call stamps every kept image (one
# account call, one password for both slots), each copy is verified and
# put in place (mode 0600) under the name the layout flashes; right before
# flashing, every image the layout writes is checked to carry this
# device's credentials; `flash.sh -r` flashes them as they are (without -r
# flash.sh would rebuild them from rootfs/ without the credentials). Pass
# or fail, the bases are put back on exit (trap) and the stamped copies
# removed: no device's password stays in bootloader/.
#
# ROOTFS_ENC=1 (one rootfs slot, or two with ROOTFS_AB=1): see
# station-enc.sh, which this script runs then; ECID and ENC_RFS_KEY are
# needed per device.
#
# Refused, with what to do instead: a layout whose APP/APP_b images are not
# the system.img/system.img_b flash.sh builds, or with other APP_*
# partitions; a ROOTFS_AB that differs from the one --prepare saw.
#
# Environment: IMPRINT_API_URL, IMPRINT_API_TOKEN_FILE (or IMPRINT_API_TOKEN),
# IMPRINT_OWNER (default azaion), IMPRINT_OFFLINE_PASSWORD_FILE (test
# stations only: no API call), ROOTFS_AB and ROOTFS_ENC (passed to
# flash.sh), ECID and ENC_RFS_KEY (ROOTFS_ENC=1, per device).
set -euo pipefail

usage() { echo "usage: station.sh --prepare|SERIAL BOARD ROOTDEV" >&2; exit 2; }
[ $# -eq 3 ] || usage
what=$1 board=$2 rootdev=$3
owner=${IMPRINT_OWNER:-azaion}
saved_layout=bootloader/system.img.base.layout
[ -x ./flash.sh ] || { echo "station: run me in Linux_for_Tegra (./flash.sh not found)" >&2; exit 1; }
# sudo drops the environment: flash.sh's board configs read ROOTFS_AB and
# ROOTFS_ENC, so they are passed on.
as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; else sudo env "ROOTFS_AB=${ROOTFS_AB:-}" "ROOTFS_ENC=${ROOTFS_ENC:-}" "$@"; fi
}
die() { echo "station: $*" >&2; exit 1; }

# The board configs enable a mode only when the variable is exactly 1.
ab=0 enc=0
[ "${ROOTFS_AB:-}" = 1 ] && ab=1
[ "${ROOTFS_ENC:-}" = 1 ] && enc=1

# "NAME FILE" for each APP* partition of a flash.sh layout (XML, one
# element a line, as NVIDIA's layouts and flash.sh's substitution leave it).
app_partitions() {
    awk '/<partition /{ match($0, /name="[^"]*"/); n = substr($0, RSTART + 6, RLENGTH - 7); f = "" }
         /<filename>/{ f = $2; if (f == "</filename>") f = "" }
         /<\/partition>/{ if (n ~ /^APP/) print n, (f == "" ? "-" : f) }' "$1"
}

# The rootfs slots of a layout, "NAME FILE UUIDFILE" a line; anything this
# script cannot stamp is refused here, before any account call.
slots_of() {
    local layout=$1 name file n=0
    while read -r name file; do
        case "$name:$file" in
            APP_ENC*)
                die "$layout has an encrypted rootfs partition ($name), which flash.sh writes only with ROOTFS_ENC=1: run station.sh with ROOTFS_ENC=1 (--prepare too), or use a layout without APP_ENC." ;;
            APP:system.img) echo "APP system.img bootloader/l4t-rootfs-uuid.txt" ;;
            APP_b:system.img_b) echo "APP_b system.img_b bootloader/l4t-rootfs-uuid.txt_b" ;;
            APP:*|APP_b:*)
                die "$layout flashes '$file' to $name, not the image flash.sh builds from rootfs/ (system.img for APP, system.img_b for APP_b), so this script cannot stamp it. Give $name the file APPFILE (APPFILE_b) in the layout, or stamp '$file' yourself (imprint provision --image) and check it with imprint verify before flashing." ;;
            *)
                die "$layout has a partition $name ($file) that this script does not know as a rootfs slot; it stamps APP and APP_b only. Remove it from the layout, or stamp and flash that image yourself." ;;
        esac
        n=$((n + 1))
    done < <(app_partitions "$layout")
    [ "$n" -gt 0 ] || die "$layout has no APP partition: nothing to stamp. Is it a flash.sh layout?"
}

if [ "$enc" = 1 ]; then
    # shellcheck source=station-enc.sh
    source "$(dirname "${BASH_SOURCE[0]}")/station-enc.sh"
    exit 0
fi
enc_base=bootloader/system_root_encrypted.img.base
if [ -f "$enc_base.layout" ] && [ "$what" != --prepare ]; then
    die "--prepare ran with ROOTFS_ENC=1: set ROOTFS_ENC=1 (and ECID, ENC_RFS_KEY) for each device too, or run --prepare again without it"
fi

if [ "$what" = --prepare ]; then
    rm -f "$enc_base"* bootloader/system_root_encrypted.img_b.base*
    # A failed --prepare leaves nothing an earlier one kept.
    rm -f bootloader/system.img.base* bootloader/system.img_b.base*
    as_root ./flash.sh --no-flash "$board" "$rootdev"
    [ -f bootloader/flash.xml ] || die "flash.sh left no bootloader/flash.xml to read the layout from"
    slots=$(slots_of bootloader/flash.xml)
    if [ "$ab" = 1 ] && ! grep -q '^APP_b ' <<< "$slots"; then
        die "ROOTFS_AB=1 but bootloader/flash.xml has no APP_b partition: this board's layout has one rootfs slot. Run without ROOTFS_AB."
    fi
    while read -r _ file uuid; do
        [ -f "bootloader/$file" ] || die "the layout flashes bootloader/$file, which flash.sh did not build"
        [ -f "$uuid" ] || die "no $uuid beside bootloader/$file"
        cp -p "bootloader/$file" "bootloader/$file.base"
        cp -p "$uuid" "bootloader/$file.base.uuid"
        echo "station: kept bootloader/$file as bootloader/$file.base, $uuid as bootloader/$file.base.uuid"
    done <<< "$slots"
    cp -p bootloader/flash.xml "$saved_layout"
    # The board config chooses the layout flash.sh -r will use again.
    sha256sum "$board.conf" > "$saved_layout.conf.sha256"
    exit 0
fi

serial=$what
[ -f "$saved_layout" ] || die "no $saved_layout; run station.sh --prepare $board $rootdev first"
slots=$(slots_of "$saved_layout")
sha256sum --quiet -c "$saved_layout.conf.sha256" > /dev/null 2>&1 ||
    die "$board.conf is not the one --prepare read (another board, or it changed): flash.sh could flash another layout. Run station.sh --prepare $board $rootdev again"
if [ "$ab" = 1 ] && ! grep -q '^APP_b ' <<< "$slots"; then
    die "ROOTFS_AB=1, but --prepare ran without it: flash.sh -r would also flash system.img_b, which holds no credentials. Run station.sh --prepare with ROOTFS_AB=1 first"
fi
if [ "$ab" = 0 ] && grep -q '^APP_b ' <<< "$slots"; then
    die "--prepare ran with ROOTFS_AB=1: set ROOTFS_AB=1 for each device too, or run --prepare again without it"
fi
while read -r _ file uuid; do
    base=bootloader/$file.base
    [ -f "$base" ] && [ -f "$base.uuid" ] ||
        die "no $base (and $base.uuid); run station.sh --prepare $board $rootdev first"
    if ! cmp -s "$uuid" "$base.uuid"; then
        die "$uuid is not the UUID $base was built with ($base.uuid); the device would not boot. Restore it, or run --prepare again"
    fi
done <<< "$slots"

work=$(mktemp -d)
restore() {
    # Every slot's stamped copy gone and its base back, the work directory
    # removed: each step runs even when one before it fails (under set -e
    # the trap would stop at the first failure and leave copies behind).
    set +e
    while read -r _ file _; do
        rm -f "bootloader/$file"
        cp -p "bootloader/$file.base" "bootloader/$file" ||
            echo "station: bootloader/$file.base could not be put back; run station.sh --prepare again" >&2
    done <<< "$slots"
    rm -rf "$work"
}
trap restore EXIT

# shellcheck source=station-api.sh
source "$(dirname "${BASH_SOURCE[0]}")/station-api.sh"
# One call for every slot: one account call, one password in A and B.
inputs=()
while read -r _ file _; do inputs+=(--image "bootloader/$file.base"); done <<< "$slots"
imprint provision --serial "$serial" "${inputs[@]}" --output "$work/" --owner "$owner" "${api[@]}"
while read -r _ file _; do
    out="$work/$serial-$file.base"
    imprint verify "$out" --serial "$serial" --owner "$owner" > /dev/null ||
        die "$out does not verify"
    (cd "$work" && sha256sum --quiet -c "$serial-$file.base.sha256")
    install -m 0600 "$out" "bootloader/$file"
done <<< "$slots"
# Right before flashing: every image the layout writes carries this
# device's credentials.
while read -r name file _; do
    imprint verify "bootloader/$file" --serial "$serial" --owner "$owner" > /dev/null ||
        die "bootloader/$file ($name) does not carry $serial's credentials; not flashing"
done <<< "$slots"
# -r: flash the images as they are.
as_root ./flash.sh -r "$board" "$rootdev"
echo "station: $serial flashed ($(cut -d' ' -f1 <<< "$slots" | tr '\n' ' ' | sed 's/ $//'))"
