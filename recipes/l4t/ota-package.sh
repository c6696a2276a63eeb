#!/bin/bash
# Builds NVIDIA's image-based OTA payload so that the update keeps each
# device's credentials and carries none (recipes/l4t/ota.md says why).
#
#   cd Linux_for_Tegra
#   sudo ota-package.sh [l4t_generate_ota_package.sh options] BOARD BASE_VERSION
#
# 1. tools/ota_tools/version_upgrade/ota_backup_files_list.txt gets the line
#    etc/azaion/device.conf unless it has it: the OTA updater deletes the
#    rootfs and restores only the paths this list names, checked relative
#    to the rootfs (nv_ota_preserve_data.sh changes into it first), so the
#    entry has no leading "/" and no "#" on its line (such lines are
#    skipped). The list is packed into the payload, so this must happen
#    before the payload is built.
# 2. The payload's rootfs image is built from rootfs/ (flash.sh --no-flash),
#    or from the image given with -f: each must hold no device's
#    credentials, or every device updated gets that one device's password.
#    `imprint verify --no-credentials` checks it; a stamped base is refused.
# 3. l4t_generate_ota_package.sh runs with the arguments given.
set -euo pipefail
generator=./tools/ota_tools/version_upgrade/l4t_generate_ota_package.sh
list=tools/ota_tools/version_upgrade/ota_backup_files_list.txt
entry=etc/azaion/device.conf
die() { echo "ota-package: $*" >&2; exit 1; }
[ $# -ge 2 ] || { echo "usage: ota-package.sh [l4t_generate_ota_package.sh options] BOARD BASE_VERSION" >&2; exit 2; }
[ -x "$generator" ] ||
    die "run me in Linux_for_Tegra with NVIDIA's OTA tools extracted into it ($generator not found)"
[ -f "$list" ] || die "$list not found: extract NVIDIA's OTA tools into Linux_for_Tegra first"
as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; else sudo env "ROOTFS_AB=${ROOTFS_AB:-}" "ROOTFS_ENC=${ROOTFS_ENC:-}" "$@"; fi
}

# The lines nv_ota_preserve_data.sh reads: no empty ones, none with a "#".
entries=$(grep -Ev '^$|[#]' "$list" || true)
if ! grep -qx "$entry" <<< "$entries"; then
    if grep -qx "/$entry" <<< "$entries"; then
        die "$list lists /$entry: the OTA updater checks each entry after changing into the rootfs, so a leading / names the running system's file and device.conf would be lost. Write it as $entry"
    fi
    # Appended on a line of its own, even if the file does not end in one.
    [ -z "$(tail -c1 "$list")" ] || echo >> "$list"
    echo "$entry" >> "$list"
    echo "ota-package: added $entry to $list"
fi

# The images the payload is built from: rootfs/, and the one -f names.
bases=(rootfs)
args=("$@")
for ((i = 0; i < ${#args[@]} - 1; i++)); do
    [ "${args[$i]}" = -f ] && bases+=("${args[$((i + 1))]}")
done
for base in "${bases[@]}"; do
    imprint verify --no-credentials "$base" ||
        die "$base holds device credentials (/etc/azaion/device.conf or another secret); an OTA payload built from it would give every device that one password. Remove them (sample-rootfs.sh --rootfs-dir does after flashing) or build from a clean tree, then run me again"
done
as_root "$generator" "$@"
