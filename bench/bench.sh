#!/usr/bin/env bash
# Times imprint against the commands a user would otherwise run, side by
# side in one run, and prints time, baseline time, ratio, peak RSS and MB/s.
#
#   bench/bench.sh [SIZE_MB] [WORKDIR]     (defaults: 1024, /tmp/imprint-bench)
#   ONLY='^tar,' bench/bench.sh            (only the rows whose case matches)
#   IMPRINT=BIN bench/bench.sh             (time BIN instead of building this tree)
#
# imprint fsyncs its output before calling the API; the baselines do not
# sync, so their writes may still be in the page cache when they finish.
#
# The rootfs is generated from this machine's /usr (real binaries, libraries
# and text), copied until it reaches SIZE_MB, so it compresses like a real
# Jetson rootfs. Built inputs are kept in WORKDIR between runs.
#
# Rows marked "cold" read the input whole (--no-cache); "warm" rows run
# with the scan cache (in WORKDIR/cache) primed by one run before, as at a
# flashing station where every device is stamped from the same base.
#
# The disk image row needs sgdisk; its baseline mounts the partition
# through a loop device where the machine allows (root), else edits it
# with debugfs.
set -euo pipefail

SIZE_MB=${1:-1024}
WORK=${2:-/tmp/imprint-bench}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
# IMPRINT=/path/to/imprint times that binary instead of building this tree.
if [ -z "${IMPRINT:-}" ]; then
  cargo build --release --quiet --manifest-path "$ROOT/Cargo.toml"
  IMPRINT="$ROOT/target/release/imprint"
fi
mkdir -p "$WORK"
cd "$WORK"
export SOURCE_DATE_EPOCH=1700000000
printf '5f0c2a9e8b7d6c4e3f2a1b0c9d8e7f6a\n' > pw
export XDG_CACHE_HOME="$WORK/cache"
unset IMPRINT_CACHE_DIR

if [ ! -f rootfs.tar ]; then
  echo "building a ${SIZE_MB} MB rootfs from /usr ..." >&2
  rm -rf tree && mkdir -p tree/etc
  printf 'root:x:0:0::/root:/bin/sh\nazaion:x:1001:1001::/home/azaion:/bin/sh\n' > tree/etc/passwd
  printf 'root:x:0:\nazaion:x:1001:\n' > tree/etc/group
  # Real files (binaries, libraries, text) in a fixed order, up to the size.
  find /usr/bin /usr/lib /usr/share -xdev -type f -size -50M -printf '%s\t%p\n' 2>/dev/null |
    sort -t$'\t' -k2 > all-files.txt
  awk -F'\t' -v max=$((SIZE_MB * 1000000)) '{ t += $1; if (t > max) exit; print substr($2, 2) }' \
    all-files.txt > files.txt
  tar -C / -cf - -T files.txt 2>/dev/null | tar -C tree -xf -
  tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@1700000000 -C tree -cf rootfs.tar .
  rm -rf tree files.txt all-files.txt
fi
[ -f rootfs.tar.gz ] || gzip -6 -c rootfs.tar > rootfs.tar.gz
[ -f rootfs.tbz2 ] || lbzip2 -9 -c rootfs.tar > rootfs.tbz2
[ -f rootfs.tar.zst ] || zstd -q -3 -T2 -c rootfs.tar > rootfs.tar.zst
if [ ! -f system.img.raw ]; then
  mkdir -p ext4tree && tar -C ext4tree -xf rootfs.tar
  # 2 GiB holding the rootfs: the rest is free space (holes).
  mke2fs -F -q -t ext4 -d ext4tree system.img.raw 2G
  rm -rf ext4tree
fi
[ -f system.img ] || img2simg system.img.raw system.img
[ -f system.img.zst ] || zstd -q -T0 -c system.img.raw > system.img.zst
# A 2 GiB SD card image laid out as jetson-disk-image-creator.sh does
# (sgdisk -og, then one sgdisk -n -c -t per partition): random kernel and
# recovery blobs around a 1 GiB APP partition holding as much of the
# rootfs as fits (its first 700 MB of files).
APP_OFF=$((67584 * 512)) APP_LEN=$((1 << 30))
if [ ! -f disk.img ]; then
  rm -f disk.img && truncate -s 2G disk.img
  sgdisk -og disk.img >/dev/null
  sgdisk -n 1:2048:67583 -c 1:kernel -t 1:8300 disk.img >/dev/null
  sgdisk -n 2:67584:2164735 -c 2:APP -t 2:8300 disk.img >/dev/null
  sgdisk -n 3:2164736:2230271 -c 3:recovery -t 3:8300 disk.img >/dev/null
  head -c 32M /dev/urandom | dd of=disk.img bs=1M iflag=fullblock seek=1 conv=notrunc status=none
  head -c 32M /dev/urandom | dd of=disk.img bs=512 seek=2164736 conv=notrunc status=none
  mkdir -p apptree && tar -C apptree -xf rootfs.tar
  find apptree -type f -printf '%s\t%p\n' | sort -t$'\t' -k2 |
    awk -F'\t' -v max=700000000 '{ t += $1; if (t > max) print $2 }' | xargs -r -d '\n' rm -f
  mke2fs -F -q -t ext4 -E offset=$APP_OFF -d apptree disk.img 1G
  rm -rf apptree
fi

# measure CMD: prints "seconds peak_kib" for one run of CMD.
measure() {
  /usr/bin/time -f '%e %M' -o .time bash -c "$1" >/dev/null 2>&1 || echo "FAILED: $1" >&2
  tail -1 .time
}

provision() { # INPUT OUTPUT [FLAGS]: a cold run unless FLAGS say otherwise
  echo "rm -f $2 $2.sha256; $IMPRINT provision --quiet --serial AZJN-0042 --offline --password-file pw --image $1 --output $2 ${3---no-cache}"
}

warm() { # INPUT OUTPUT: a run with the scan cache primed for INPUT
  echo "rm -f $2 $2.sha256; $IMPRINT provision --quiet --serial AZJN-0043 --offline --password-file pw --image $1 --output $2"
}

prime() { # INPUT OUTPUT: fills the scan cache for INPUT (not timed)
  bash -c "$(provision "$1" "$2" "")"
}

settle() { # INPUT
  sync
  { echo 3 > /proc/sys/vm/drop_caches; } 2>/dev/null || true
  cat "$1" > /dev/null
}

declare -a ROWS
row() { # case, input, baseline-label, baseline-cmd, imprint-cmd, target
  local t_b t_i rss_b rss_i
  if [ -n "${ONLY:-}" ] && ! [[ "$1" =~ $ONLY ]]; then return; fi
  # Both sides start from the same state: what earlier commands wrote is
  # flushed, the page cache is emptied (when we may) and refilled with the
  # input alone, so neither side pays for the other's writeback or for
  # reclaiming its pages. (Without this, this VM's timings swung 3x
  # depending on which side ran after a large write.)
  settle "$2"
  read -r t_b rss_b < <(measure "$4")
  settle "$2"
  read -r t_i rss_i < <(measure "$5")
  local mb
  mb=$(( $(stat -c %s "$2") / 1000000 ))
  ROWS+=("$(printf '| %s | %s | %.2f s | %.2f s | %.2f | <= %s | %d MiB | %.0f MB/s |' \
    "$1" "$3" "$t_b" "$t_i" "$(echo "$t_i / $t_b" | bc -l)" "$6" "$((rss_i / 1024))" \
    "$(echo "$mb / ($t_i + 0.0001)" | bc -l)")")
  echo "${ROWS[-1]}" >&2
}

row "tar.gz, one serial" rootfs.tar.gz "gzip -dc IN > /dev/null" \
  "gzip -dc rootfs.tar.gz > /dev/null" "$(provision rootfs.tar.gz out.tar.gz)" 0.5
row "tar.gz, one serial" rootfs.tar.gz "gzip -dc | add file | gzip -6" \
  "mkdir -p add/etc/azaion && echo x > add/etc/azaion/device.conf && gzip -dc rootfs.tar.gz > scripted.tar && tar -rf scripted.tar -C add ./etc/azaion/device.conf && gzip -6 -c scripted.tar > scripted.tar.gz" \
  "$(provision rootfs.tar.gz out.tar.gz)" 0.06
# Cold .tbz2 (NVIDIA's sample rootfs, and every CI runner's first run): the
# scan decodes every block, on all cores, with imprint's own block decoder.
row ".tbz2, one serial" rootfs.tbz2 "lbzip2 -n2 -dc IN > /dev/null" \
  "lbzip2 -n2 -dc rootfs.tbz2 > /dev/null" "$(provision rootfs.tbz2 out.tbz2)" 1.0
row "tar, one serial" rootfs.tar "cp IN OUT && openssl dgst -sha256 OUT" \
  "cp rootfs.tar copy.tar && openssl dgst -sha256 copy.tar" "$(provision rootfs.tar out.tar)" 1.5
# imprint makes its output durable before the API call; the same baseline
# with the copy fsynced too, for comparison (not a target of its own).
row "tar, one serial, durable" rootfs.tar "cp IN OUT && sync OUT && openssl dgst -sha256 OUT" \
  "cp rootfs.tar copy.tar && sync copy.tar && openssl dgst -sha256 copy.tar" "$(provision rootfs.tar out.tar)" 1.5
row "tar.zst, one serial" rootfs.tar.zst "zstd -dc IN | zstd -3 -T2 > OUT" \
  "zstd -q -dc rootfs.tar.zst | zstd -q -3 -T2 > copy.tar.zst" "$(provision rootfs.tar.zst out.tar.zst)" 1.0
row "ext4 raw 2 GiB, one serial" system.img.raw "cp --sparse=always IN OUT && openssl dgst -sha256 OUT" \
  "cp --sparse=always system.img.raw copy.raw && openssl dgst -sha256 copy.raw" "$(provision system.img.raw out.img.raw)" 1.5
row "sparse system.img" system.img "simg2img + img2simg" \
  "simg2img system.img copy.raw && img2simg copy.raw copy.img" "$(provision system.img out.img)" 0.5
# What a user would do instead of imprint for a disk image or a compressed
# raw image: the same edit with the system's tools, into a new file.
printf 'mkdir /etc/azaion\nwrite pw /etc/azaion/device.conf\nsif /etc/azaion/device.conf mode 0100600\nsif /etc/azaion/device.conf uid 1001\nsif /etc/azaion/device.conf gid 1001\n' > debugfs.cmds
MOUNT_WRITE="mkdir -p mnt/etc/azaion && install -m 600 -o 1001 -g 1001 pw mnt/etc/azaion/device.conf && umount mnt"
mkdir -p mnt
probe=$(losetup -r -P --show -f disk.img 2>/dev/null || true)
if [ -n "$probe" ] && [ -b "${probe}p2" ]; then
  losetup -d "$probe"
  DISK_BASE="losetup -P + mount + write + umount + sha256"
  DISK_CMD="cp --sparse=always disk.img copy.disk.img && dev=\$(losetup -P --show -f copy.disk.img) && mount \${dev}p2 mnt && $MOUNT_WRITE && losetup -d \$dev && openssl dgst -sha256 copy.disk.img"
elif [ -n "$probe" ]; then
  # Loop devices, but no partition devices (a container): the same with
  # the partition's offset.
  losetup -d "$probe"
  DISK_BASE="losetup -o + mount + write + umount + sha256"
  DISK_CMD="cp --sparse=always disk.img copy.disk.img && dev=\$(losetup -o $APP_OFF --sizelimit $APP_LEN --show -f copy.disk.img) && mount \$dev mnt && $MOUNT_WRITE && losetup -d \$dev && openssl dgst -sha256 copy.disk.img"
else
  DISK_BASE="dd APP out + debugfs write + dd back + sha256"
  # conv=sparse skips zero blocks: the copy holds the input's bytes there.
  DISK_CMD="cp --sparse=always disk.img copy.disk.img && dd if=disk.img of=copy.app bs=1M iflag=skip_bytes,count_bytes skip=$APP_OFF count=$APP_LEN conv=sparse status=none && debugfs -w -f debugfs.cmds copy.app && dd if=copy.app of=copy.disk.img bs=1M oflag=seek_bytes seek=$APP_OFF conv=notrunc,sparse status=none && openssl dgst -sha256 copy.disk.img"
fi
row "GPT disk 2 GiB, APP 1 GiB" disk.img "$DISK_BASE" \
  "$DISK_CMD" "$(provision disk.img out.disk.img)" 1.0
row "system.img.zst (2 GiB ext4)" system.img.zst "zstd -d + debugfs write + zstd -T0 + sha256" \
  "rm -f copy.raw copy.img.zst && zstd -q -d system.img.zst -o copy.raw && debugfs -w -f debugfs.cmds copy.raw && zstd -q -T0 copy.raw -o copy.img.zst && openssl dgst -sha256 copy.img.zst" \
  "$(provision system.img.zst out.img.zst)" 1.0
# L4T disk encryption (ROOTFS_ENC=1): a per-device LUKS2 container built
# from the plain sparse system.img (provision --luks-encrypt) against the
# closest rootless stand-in of flash.sh's loop + dm-crypt + mkfs + copy +
# mksparse path: cryptsetup's offline userspace encryption of a copy of
# the raw image (every block, as dm-crypt writes the whole mapping's used
# and zeroed blocks), then img2simg. Both with PBKDF2 (100000 iterations).
LUKS_UUID=2f8e0c1a-5b4d-4e6f-9a7b-3c2d1e0f9a8b
printf '00112233445566778899aabbccddeeff\n' > ekb.txt
printf 'passphrase' > lukspass
row "LUKS2 per-device build, sparse system.img" system.img \
  "cp + cryptsetup reencrypt --encrypt + img2simg" \
  "rm -f copy.enc copy.enc.simg && cp --sparse=always system.img.raw copy.enc && truncate -s +16M copy.enc && cryptsetup reencrypt --encrypt --type luks2 -c aes-xts-plain64 -s 256 --uuid $LUKS_UUID --pbkdf pbkdf2 --pbkdf-force-iterations 100000 --reduce-device-size 16M -q --key-file lukspass copy.enc && img2simg copy.enc copy.enc.simg" \
  "$(provision system.img out.enc.img "--no-cache --luks-encrypt --luks-uuid $LUKS_UUID --l4t-ekb-key ekb.txt --ecid 0x1234")" 0.5
# The same container from the rootfs tarball (L4T's rootfs/ as a tar):
# imprint makes the ext4 from the archive itself (mke2fs, then every member
# through libext2fs) against extracting it, mke2fs -d, and the encryption
# above. The container is the 2 GiB filesystem plus the 16 MiB header.
row "LUKS2 per-device build, rootfs.tar.gz" rootfs.tar.gz \
  "tar -x + mke2fs -d + cryptsetup reencrypt --encrypt + img2simg" \
  "rm -rf x copy.enc copy.enc.simg && mkdir x && tar -C x -xzf rootfs.tar.gz && mke2fs -F -q -t ext4 -d x copy.enc 2G && rm -rf x && truncate -s +16M copy.enc && cryptsetup reencrypt --encrypt --type luks2 -c aes-xts-plain64 -s 256 --uuid $LUKS_UUID --pbkdf pbkdf2 --pbkdf-force-iterations 100000 --reduce-device-size 16M -q --key-file lukspass copy.enc && img2simg copy.enc copy.enc.simg" \
  "$(provision rootfs.tar.gz out.enc.img "--no-cache --luks-encrypt --luks-uuid $LUKS_UUID --l4t-ekb-key ekb.txt --ecid 0x1234 --luks-size $(((2 << 30) + (16 << 20))) --luks-boot-partuuid 8c3b7d2e-1f4a-4b5c-9d6e-7f8a9b0c1d2e")" 0.5
# Stamping that container again (another serial into an existing encrypted
# image) against re-encrypting the whole image as above.
if [ -z "${ONLY:-}" ] || [[ "LUKS2 stamp of an encrypted sparse image" =~ $ONLY ]]; then
  bash -c "$(provision system.img enc.img "--no-cache --luks-encrypt --luks-uuid $LUKS_UUID --l4t-ekb-key ekb.txt --ecid 0x1234")" >/dev/null
  row "LUKS2 stamp of an encrypted sparse image" enc.img \
    "cp + cryptsetup reencrypt --encrypt + img2simg" \
    "rm -f copy.enc copy.enc.simg && cp --sparse=always system.img.raw copy.enc && truncate -s +16M copy.enc && cryptsetup reencrypt --encrypt --type luks2 -c aes-xts-plain64 -s 256 --uuid $LUKS_UUID --pbkdf pbkdf2 --pbkdf-force-iterations 100000 --reduce-device-size 16M -q --key-file lukspass copy.enc && img2simg copy.enc copy.enc.simg" \
    "$(provision enc.img out.enc2.img "--no-cache --l4t-ekb-key ekb.txt --ecid 0x1234")" 0.2
  rm -f enc.img enc.img.sha256
fi
# Warm single runs: the scan cache primed by one run, then another serial
# from the same base, against the cold run and the user's alternative.
warm_rows() { # case, input, ext, alternative-label, alternative-cmd, target vs cold
  if [ -n "${ONLY:-}" ] && ! [[ "$1, warm vs cold" =~ $ONLY || "$1, warm vs $4" =~ $ONLY ]]; then
    return
  fi
  prime "$2" "out.$3"
  row "$1, warm vs cold" "$2" "imprint cold (--no-cache)" \
    "$(provision "$2" "cold.$3")" "$(warm "$2" "out.$3")" "$6"
  row "$1, warm vs $4" "$2" "$4" "$5" "$(warm "$2" "out.$3")" "-"
}
warm_rows "tar" rootfs.tar tar "cp + sha256" \
  "cp rootfs.tar copy.tar && openssl dgst -sha256 copy.tar" 1.0
warm_rows "tar.zst" rootfs.tar.zst tar.zst "zstd -dc, zstd -3 -T2" \
  "zstd -q -dc rootfs.tar.zst | zstd -q -3 -T2 > copy.tar.zst" 0.1
warm_rows "tar.gz" rootfs.tar.gz tar.gz "gzip -dc" \
  "gzip -dc rootfs.tar.gz > /dev/null" 0.1
warm_rows ".tbz2" rootfs.tbz2 tbz2 "lbzip2 -n2 -dc" \
  "lbzip2 -n2 -dc rootfs.tbz2 > /dev/null" 0.1
# xz takes minutes to build: only when its rows are asked for. `xz -T2`
# writes many blocks (24 MiB each at -6), plain `xz` one.
XZ_ALT="mkdir -p add/etc/azaion && echo x > add/etc/azaion/device.conf && xz -dc IN > scripted.tar && tar -rf scripted.tar -C add ./etc/azaion/device.conf && xz -6 -T2 -c scripted.tar > scripted.tar.xz"
if [ -z "${ONLY:-}" ] || [[ "tar.xz" =~ $ONLY ]]; then
  [ -f rootfs.tar.xz ] || xz -6 -T2 -c rootfs.tar > rootfs.tar.xz
  [ -f rootfs.1block.tar.xz ] || xz -6 -T1 -c rootfs.tar > rootfs.1block.tar.xz
  row "tar.xz multi-block, cold" rootfs.tar.xz "xz -T2 -dc IN > /dev/null" \
    "xz -T2 -dc rootfs.tar.xz > /dev/null" "$(provision rootfs.tar.xz out.tar.xz)" 1.5
  row "tar.xz multi-block, cold" rootfs.tar.xz "xz -dc | tar -r | xz -6 -T2" \
    "${XZ_ALT//IN/rootfs.tar.xz}" "$(provision rootfs.tar.xz out.tar.xz)" "-"
  row "tar.xz single-block, cold" rootfs.1block.tar.xz "xz -T2 -dc IN > /dev/null" \
    "xz -T2 -dc rootfs.1block.tar.xz > /dev/null" "$(provision rootfs.1block.tar.xz out.tar.xz)" 2.0
  row "tar.xz single-block, cold" rootfs.1block.tar.xz "xz -dc | tar -r | xz -6 -T2" \
    "${XZ_ALT//IN/rootfs.1block.tar.xz}" "$(provision rootfs.1block.tar.xz out.tar.xz)" "-"
  # The single-block output against a full `xz -6` of the same archive
  # (target: within 1%): the kept chunks plus the primed tail.
  if [ -f out.tar.xz ] && { [ -z "${ONLY:-}" ] || [[ "tar.xz single-block, cold" =~ $ONLY ]]; }; then
    full=$(xz -dc out.tar.xz | xz -6 -T1 | wc -c)
    echo "single-block output: $(stat -c %s out.tar.xz) bytes; xz -6 of the same tar: $full bytes" >&2
  fi
  warm_rows "tar.xz" rootfs.tar.xz tar.xz "xz -T2 -dc" "xz -T2 -dc rootfs.tar.xz > /dev/null" 0.1
  warm_rows "tar.xz single-block" rootfs.1block.tar.xz tar.xz "xz -T2 -dc" \
    "xz -T2 -dc rootfs.1block.tar.xz > /dev/null" 0.6
  for f in rootfs.tar.xz rootfs.1block.tar.xz out.tar.xz; do echo "$f: $(stat -c %s $f) bytes" >&2; done
fi
if [ -z "${ONLY:-}" ] || [[ "img.xz system.img.xz disk.wic.xz single-block" =~ $ONLY ]]; then
  # ONLY=img.xz means all three rows (the .wic.xz labels do not name it);
  # ONLY=system.img or ONLY=wic.xz picks rows by their labels as usual.
  ONLY_SAVED=${ONLY:-}
  [ "$ONLY_SAVED" != img.xz ] || ONLY=
  [ -f system.img.xz ] || xz -6 -T2 -c system.img.raw > system.img.xz
  row "system.img.xz (2 GiB ext4), cold" system.img.xz "xz -T2 -dc IN > /dev/null" \
    "xz -T2 -dc system.img.xz > /dev/null" "$(provision system.img.xz out.img.xz)" "-"
  [ -f disk.wic.xz ] || xz -6 -T2 -c disk.img > disk.wic.xz
  row "disk.wic.xz (GPT 2 GiB), cold" disk.wic.xz "xz -T2 -dc IN > /dev/null" \
    "xz -T2 -dc disk.wic.xz > /dev/null" "$(provision disk.wic.xz out.wic.xz)" 1.5
  # Plain `xz`: one block, its LZMA2 chunks before the rootfs kept.
  [ -f disk.1block.wic.xz ] || xz -6 -T1 -c disk.img > disk.1block.wic.xz
  row "disk.wic.xz single-block (GPT 2 GiB), cold" disk.1block.wic.xz "xz -T2 -dc IN > /dev/null" \
    "xz -T2 -dc disk.1block.wic.xz > /dev/null" "$(provision disk.1block.wic.xz out.wic.xz)" 2.0
  for f in system.img.xz out.img.xz disk.wic.xz disk.1block.wic.xz out.wic.xz; do
    echo "$f: $(stat -c %s $f) bytes" >&2
  done
  ONLY=$ONLY_SAVED
fi
warm_rows "ext4 raw 2 GiB" system.img.raw img.raw "cp --sparse=always" \
  "cp --sparse=always system.img.raw copy.raw" 1.0
warm_rows "sparse system.img" system.img img "cp" "cp system.img copy.img" 1.0
seq -f 'AZJN-%04g' 1 20 > serials.txt
SINGLES=""
for s in $(cat serials.txt); do
  SINGLES+="rm -f single-$s.tar.gz*; $IMPRINT provision --quiet --serial $s --offline --password-file pw --image rootfs.tar.gz --output single-$s.tar.gz --no-cache; "
done
row "20 serials from one tar.gz" rootfs.tar.gz "20 single-serial runs" \
  "$SINGLES" "rm -rf batch && mkdir batch && $IMPRINT provision --quiet --serials serials.txt --offline --password-file pw --image rootfs.tar.gz --output batch/ --no-cache" 0.15
rm -f copy.* cold.* scripted.* out.* single-* debugfs.cmds ekb.txt lukspass && rm -rf add batch mnt x

echo
echo "imprint $("$IMPRINT" --version | cut -d' ' -f2), $(nproc) cores, rootfs.tar $(( $(stat -c %s rootfs.tar) / 1000000 )) MB"
echo
echo "| case | baseline | baseline time | imprint time | ratio | target | imprint peak RSS | imprint MB/s of input |"
echo "|---|---|---|---|---|---|---|---|"
printf '%s\n' "${ROWS[@]}"
