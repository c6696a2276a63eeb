#!/bin/bash
# Stand-in for NVIDIA's Linux_for_Tegra/flash.sh, used by tests/it/recipes.rs.
# Our own code: it reproduces the files the real script (release r35.3.1,
# cited below as flash.sh:LINE) reads and writes for the flags and
# variables users pass, and flashes nothing; the "device" is the directory
# $L4T_STANDIN_DEVICE, one file per partition it writes.
#
# Flags and variables:
# - ROOTFS_AB=1 / ROOTFS_ENC=1 (exactly "1", as the board configs test them,
#   p2972-0000.conf.common:249-265, p3767.conf.common:204-208) choose the
#   layout: APP; APP + APP_b; APP (system_boot.img) + APP_ENC
#   (system_root_encrypted.img); or all four with _b.
# - `-c LAYOUT` (CFGFILE=${OPTARG}, flash.sh:1780) or EMMC_CFG=LAYOUT in
#   the board config: another partition layout (XML) to substitute.
# - `--no-flash`: everything but flashing (flash.sh:1809, 4181-4184).
# - `-r`: "skip building and reuse existing system.img" (flash.sh:272, 1789):
#   nothing is built, and sysfile_exist (flash.sh:1077-1106) requires
#   system.img, and system.img_b with ROOTFS_AB=1; with ROOTFS_ENC=1
#   system_boot.img and system_root_encrypted.img (and their _b).
# - `--sign`, `--no-systemimg`, `--external-device`, `-S SIZE`: accepted.
# - L4T_STANDIN_FAIL=1 makes the flash fail after the images were read;
#   L4T_STANDIN_MODES=FILE gets "FILE MODE" for each file flashed.
#
# Files, as the real script handles them:
# - bootloader/l4t-rootfs-uuid.txt (and _b with ROOTFS_AB=1): read when
#   present, else a new UUID is written there (rootuuid_chk_and_gen and
#   rootuuid_gen, flash.sh:993-1043; rootuuid_restore reads _b when
#   rootfs_ab is 1, flash.sh:1045-1060). extlinux.conf boots
#   root=PARTUUID=<uuid> (flash.sh:2375-2418); slot B's command line has
#   the _b UUID in its place (cmdline_b, flash.sh:2706-2720).
# - Without -r, create_fsimg (flash.sh:1231-1283) builds
#   bootloader/system.img (Android sparse, with system.img.raw beside it,
#   build_fsimg flash.sh:517-632) from rootfs/, and system.img_b from the
#   same rootfs/ with cmdline_b when ROOTFS_AB=1 and the layout has APP_b.
#   With ROOTFS_ENC=1 it builds system_boot.img from rootfs/boot
#   (build_boot_fsimg, tools/disk_encryption/disk_encryption_helper.func:
#   408-500) and system_root_encrypted.img from rootfs/ without boot/
#   (build_enc_root_fsimg, same file 503-630: a LUKS2 container made with
#   cryptsetup luksFormat). Here it is the sparse ext4 image itself, NOT
#   encrypted (cryptsetup needs root and a loop device): only its name,
#   role and partition are reproduced. The UUID files it uses:
#   l4t-bootpart-uuid.txt for APP, l4t-rootfs-uuid.txt_enc for the
#   container (cited where they are read below).
# - With ROOTFS_ENC=1 and ROOTFS_AB=1 (flash.sh:1277-1285, 2666-2676,
#   2711-2716, 3392-3401): slot B is APP_b (system_boot.img_b, booting
#   root=UUID=<l4t-rootfs-uuid.txt_b_enc>, the _b UUID rootuuid_restore
#   "_enc" reads, flash.sh:1053-1056, 2407) and APP_ENC_b
#   (system_root_encrypted.img_b, a second container under that UUID,
#   whose passphrase has it as context: build_enc_root_fsimg's
#   `-c '${__rootfsuuid}'`, helper.func:546-548, called with
#   rootfsuuid_b_enc at flash.sh:1280-1283); APP_b's unique_guid is
#   l4t-bootpart-uuid.txt_b (APPUUID_b -> bootpartuuid_b, flash.sh:3399).
# - With ROOTFS_ENC=1 and -r, each container flashed must be what the
#   device boots: checked with cryptsetup against
#   L4T_STANDIN_PASSPHRASE_FILE (slot A's passphrase) and, with
#   ROOTFS_AB=1, L4T_STANDIN_PASSPHRASE_FILE_B (slot B's).
# - bootloader/flash.xml: the layout with its placeholders substituted,
#   APPUUID_b before APPUUID, APPFILE -> system.img (so APPFILE_b becomes
#   system.img_b) (APP_TAG, flash.sh:3360-3445; written by `sed
#   ${CFGCONV} > ${localcfgfile}` in bootloader/, flash.sh:2443, 3546-3550,
#   3614). The partitions and file names come from NVIDIA's layouts
#   (bootloader/t186ref/cfg/flash_t194_sdmmc_rootfs_ab.xml:234-257,
#   flash_t194_sdmmc_enc_rfs.xml:234-257,
#   flash_t194_sdmmc_enc_rootfs_ab.xml:234-283; p2972-0000.conf.common:
#   261-265 picks the last for ROOTFS_AB=1 with ROOTFS_ENC=1).
# - Flashing writes each APP* partition of flash.xml with the file it names
#   from bootloader/ ($DEVICE/<NAME>.img, unsparsed) and its unique_guid
#   ($DEVICE/<NAME>.partuuid).
set -eo pipefail
cd "$(dirname "$0")"
reuse=0 no_flash=0 layout=""
echo "$@" > "${L4T_STANDIN_LOG:-/dev/null}"
while [ $# -gt 2 ]; do
    case "$1" in
        -r) reuse=1 ;;
        --no-flash) no_flash=1 ;;
        --sign|--no-systemimg|--external-device) ;;
        -c) layout=$2; shift ;;
        -S) shift ;;
        *) echo "flash.sh stand-in: unknown option $1" >&2; exit 1 ;;
    esac
    shift
done
[ $# -eq 2 ] || { echo "Usage: flash.sh [options] <target_board> <rootdev>" >&2; exit 1; }
board=$1 rootdev=$2
[ -f "$board.conf" ] || { echo "Error: $board.conf is not found" >&2; exit 1; }
# The board config may name its own layout (EMMC_CFG, as
# p2972-0000.conf.common:254 does; flash.sh sources it at :1665).
EMMC_CFG=""
# shellcheck disable=SC1090
source "./$board.conf"
[ -z "$layout" ] && [ -n "$EMMC_CFG" ] && layout=$EMMC_CFG
rootfs_ab=0 disk_enc=0
[ "${ROOTFS_AB:-}" = 1 ] && rootfs_ab=1
[ "${ROOTFS_ENC:-}" = 1 ] && disk_enc=1

# The layout: NVIDIA's partitions, placeholders as in their XML files.
partition() { # NAME FILENAME UUID
    printf '        <partition name="%s" type="data">\n' "$1"
    printf '            <unique_guid> %s </unique_guid>\n' "$3"
    printf '            <filename> %s </filename>\n' "$2"
    printf '        </partition>\n'
}
default_layout() {
    echo '<?xml version="1.0"?>'
    echo '<partition_layout version="01.00.0000">'
    echo '    <device type="sdmmc_user" instance="3">'
    if [ "$disk_enc" = 0 ]; then
        partition APP APPFILE APPUUID
        [ "$rootfs_ab" = 1 ] && partition APP_b APPFILE_b APPUUID_b
    else
        # In NVIDIA's order (flash_t194_sdmmc_enc_rootfs_ab.xml:234-283).
        partition APP system_boot.img APPUUID
        [ "$rootfs_ab" = 1 ] && partition APP_b system_boot.img_b APPUUID_b
        partition APP_ENC system_root_encrypted.img APP_ENC_UUID
        [ "$rootfs_ab" = 1 ] && partition APP_ENC_b system_root_encrypted.img_b APP_ENC_UUID_b
    fi
    echo '    </device>'
    echo '</partition_layout>'
}

uuidfile=bootloader/l4t-rootfs-uuid.txt
root_uuid() { # SUFFIX [FILE]: the UUID in the file, or a new one written there
    local file=${2:-$uuidfile}$1
    if [ ! -f "$file" ]; then
        cat /proc/sys/kernel/random/uuid > "$file"
    fi
    sed -n 's/^\([0-9a-f-]\{36\}\)$/\1/p' "$file"
}
uuid=$(root_uuid "")
uuid_b=""
[ "$rootfs_ab" = 1 ] && uuid_b=$(root_uuid _b)
# ROOTFS_ENC=1: APP (/boot) gets the UUID in l4t-bootpart-uuid.txt
# (bootpartuuid_restore, disk_encryption_helper.func:31, 93-99; APPUUID is
# substituted with it, flash.sh:3402), APP_ENC the rootfs UUID
# (flash.sh:3403), and the LUKS container's UUID, which the kernel command
# line boots as root=UUID= (flash.sh:2405-2412), is l4t-rootfs-uuid.txt_enc
# (rootuuid_restore "_enc", flash.sh:2406).
# With ROOTFS_AB=1 each has its _b twin (bootpartuuid_restore and
# rootuuid_restore read "_b" too: helper.func:93-99, flash.sh:1053-1056):
# l4t-bootpart-uuid.txt_b for APP_b, l4t-rootfs-uuid.txt_b_enc for the
# slot-B container.
boot_uuid="$uuid" enc_uuid="" boot_uuid_b="$uuid_b" enc_uuid_b=""
if [ "$disk_enc" = 1 ]; then
    boot_uuid=$(root_uuid "" bootloader/l4t-bootpart-uuid.txt)
    enc_uuid=$(root_uuid _enc)
    if [ "$rootfs_ab" = 1 ]; then
        boot_uuid_b=$(root_uuid _b bootloader/l4t-bootpart-uuid.txt)
        enc_uuid_b=$(root_uuid _b_enc)
    fi
fi

# flash.xml, substituted in bootloader/.
if [ -n "$layout" ]; then
    cat "$layout"
else
    default_layout
fi | sed -e "s/APPUUID_b/$boot_uuid_b/" -e "s/APPUUID/$boot_uuid/" \
    -e "s/APP_ENC_UUID_b/$uuid_b/" -e "s/APP_ENC_UUID/$uuid/" \
    -e "s/APPFILE/system.img/" > bootloader/flash.xml

# "NAME FILE UUID" for each APP* partition of flash.xml.
app_partitions() {
    awk '/<partition /{ match($0, /name="[^"]*"/); n = substr($0, RSTART + 6, RLENGTH - 7); f = ""; u = "" }
         /<unique_guid>/{ u = $2; if (u == "</unique_guid>") u = "" }
         /<filename>/{ f = $2 }
         /<\/partition>/{ if (n ~ /^APP/ && f != "") print n, f, (u == "" ? "-" : u) }' bootloader/flash.xml
}

extlinux() { # ROOT: rootfs/boot/extlinux/extlinux.conf boots root=ROOT
    mkdir -p rootfs/boot/extlinux
    local root=$1
    printf 'LABEL primary\n      LINUX /boot/Image\n      APPEND ${cbootargs} root=%s rw rootwait\n' \
        "$root" > rootfs/boot/extlinux/extlinux.conf
}
fsimg() { # IMAGE WHAT: the sparse image and its .raw; WHAT is all (mke2fs
    # -d reads rootfs/ itself, file capabilities included), boot
    # (build_boot_fsimg: rootfs/boot only) or root (rootfs/ without boot/)
    local image=$1 src=rootfs stage=""
    if [ "$2" != all ]; then
        stage=$(mktemp -d)
        src=$stage
        if [ "$2" = boot ]; then
            tar -C rootfs -cf - ./boot
        else
            tar -C rootfs --exclude=./boot -cf - .
        fi | tar -C "$stage" -xpf -
    fi
    rm -f "bootloader/$image.raw"
    mke2fs -q -t ext4 -d "$src" -E root_owner=0:0 "bootloader/$image.raw" 32M
    img2simg "bootloader/$image.raw" "bootloader/$image"
    [ -z "$stage" ] || rm -rf "$stage"
}

if [ "$reuse" = 1 ]; then
    # sysfile_exist: every file the layout's APP* partitions name.
    while read -r name file _; do
        echo "Reusing existing $file... "
        [ -e "bootloader/$file" ] || { echo "file does not exist." >&2; exit 1; }
    done < <(app_partitions)
    if [ "$disk_enc" = 1 ]; then
        # Reused as it is: flash.sh -r builds no container and derives no
        # passphrase (the ECID and key are read only by build_enc_root_fsimg,
        # disk_encryption_helper.func:503-545, which -r skips,
        # flash.sh:3411-3416). What the device then needs (not flash.sh's
        # check, the device's initrd's): a LUKS container with the UUID
        # the command line boots (l4t-rootfs-uuid.txt_enc) that opens with
        # this chip's passphrase (from its EKB key and ECID);
        # L4T_STANDIN_PASSPHRASE_FILE holds it, derived by the tests.
        while read -r name file _; do
            case "$name" in
                APP_ENC) want=$enc_uuid pass=${L4T_STANDIN_PASSPHRASE_FILE:?} ;;
                APP_ENC_b) want=$enc_uuid_b pass=${L4T_STANDIN_PASSPHRASE_FILE_B:?} ;;
                *) continue ;;
            esac
            enc=bootloader/$file
            if [ "$(head -c4 "$enc" | od -An -tx1 | tr -d ' \n')" = 3aff26ed ]; then
                simg2img "$enc" "$enc.standin-raw"
                enc=$enc.standin-raw
            fi
            got=$(cryptsetup luksUUID "$enc" 2> /dev/null) || got=""
            if [ "$got" != "$want" ]; then
                rm -f "bootloader/$file.standin-raw"
                echo "flash.sh stand-in: bootloader/$file ($name) is not a LUKS container with UUID $want (l4t-rootfs-uuid.txt${name#APP_ENC}_enc): the device would not find its root" >&2
                exit 1
            fi
            if ! cryptsetup open --test-passphrase --key-file "$pass" "$enc"; then
                rm -f "bootloader/$file.standin-raw"
                echo "flash.sh stand-in: bootloader/$file ($name) does not open with this device's passphrase: the device would not boot" >&2
                exit 1
            fi
            rm -f "bootloader/$file.standin-raw"
        done < <(app_partitions)
    fi
else
    # The kernel and initrd go to rootfs/boot first (flash.sh:3420-3428).
    mkdir -p rootfs/boot
    while read -r name file _; do
        # Only the files flash.sh builds; a layout naming another file
        # for APP gets that file flashed as it is.
        case "$name:$disk_enc:$file" in
            APP:0:system.img) extlinux "PARTUUID=$uuid"; fsimg "$file" all ;;
            APP_b:0:system.img_b) extlinux "PARTUUID=$uuid_b"; fsimg "$file" all ;;
            # root=UUID= of the container (flash.sh:2405-2412), slot B's
            # with the _b_enc UUID in its place (cmdline_b, :2711-2716).
            APP:1:system_boot.img) extlinux "UUID=$enc_uuid"; fsimg "$file" boot ;;
            APP_b:1:system_boot.img_b) extlinux "UUID=$enc_uuid_b"; fsimg "$file" boot ;;
            APP_ENC:1:system_root_encrypted.img*|APP_ENC_b:1:system_root_encrypted.img*) fsimg "$file" root ;;
        esac
    done < <(app_partitions)
    if [ "$disk_enc" = 1 ]; then extlinux "UUID=$enc_uuid"; else extlinux "PARTUUID=$uuid"; fi
fi
[ "$no_flash" = 1 ] && { echo "*** no-flash flag enabled. Exiting now... ***"; exit 0; }
device=${L4T_STANDIN_DEVICE:?}
mkdir -p "$device"
while read -r name file guid; do
    [ -f "bootloader/$file" ] || { echo "Error: bootloader/$file ($name) not found" >&2; exit 1; }
    # For the tests (not NVIDIA's): the mode of each file flashed.
    [ -z "${L4T_STANDIN_MODES:-}" ] || stat -c "$file %a" "bootloader/$file" >> "$L4T_STANDIN_MODES"
    if [ "$(head -c4 "bootloader/$file" | od -An -tx1 | tr -d ' \n')" = 3aff26ed ]; then
        simg2img "bootloader/$file" "$device/$name.img"
    else
        cp "bootloader/$file" "$device/$name.img"
    fi
    [ "${L4T_STANDIN_FAIL:-0}" = 1 ] && { echo "flash.sh stand-in: the device stopped answering" >&2; exit 1; }
    echo "$guid" > "$device/$name.partuuid"
done < <(app_partitions)
echo "*** The target $board has been flashed successfully. ***"
