# shellcheck shell=bash
# The plain root filesystem inside one of L4T's encrypted rootfs
# containers, built as flash.sh's build_enc_root_fsimg fills the container
# (tools/disk_encryption/disk_encryption_helper.func 503-630, r35.3.1):
# rootfs/ without boot/ (586), /etc/fstab's last line replaced by the
# crypt_root line (588-592), /boot mounted by the slot's APP partition
# UUID (594-597) and, with A/B, the other slot's container on
# /mnt/crypt_root_other (599-602). Sourced by station-enc.sh and
# initrd-station-enc.sh, which define as_root.

# enc_base ROOTFS BOOTPART_UUID_FILE AB SIZE OUT: OUT, an ext4 of SIZE bytes.
enc_base() {
    local rootfs=$1 bootpart=$2 ab=$3 size=$4 out=$5 stage
    stage=$(mktemp -d)
    # As root: the tree keeps its owners.
    (cd "$rootfs" && tar --exclude=boot -cf - -- *) | as_root tar -C "$stage" -xpf - &&
        as_root bash -c 'f=$1/etc/fstab; if [ -f "$f" ]; then head -n -1 "$f" > "$f.tmp"; mv "$f.tmp" "$f"; else mkdir -p "${f%/*}"; fi
            { echo "/dev/mapper/crypt_root / ext4 defaults 0 1"; echo "PARTUUID=$2 /boot ext4 defaults 0 1"; } >> "$f"
            if [ "$3" = 1 ]; then
                mkdir -p "$1/mnt/crypt_root_other"
                echo "/dev/mapper/crypt_root_other /mnt/crypt_root_other ext4 defaults 0 2" >> "$f"
            fi' \
            _ "$stage" "$(head -n1 "$bootpart")" "$ab" &&
        as_root mke2fs -q -t ext4 -d "$stage" "$out" "$((size / 1024))k"
    local rc=$?
    as_root rm -rf "$stage"
    return "$rc"
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
