#!/bin/bash
# Stand-in for NVIDIA's tools/ota_tools/version_upgrade/nv_ota_preserve_data.sh,
# used by tests/it/recipes.rs. Our own code reproducing what the real one does
# (cited as preserve:LINE from the R35 OTA tools, 2020-2023 version, stored
# in Seeed-Studio/Linux_for_Tegra at commit 573eaf03; the r35.3.1 BSP
# mirror does not carry the OTA tools, which NVIDIA ships as a separate
# tarball). Sourced by nv_ota_rootfs_updater.sh.
#
# ota_backup_customer_files WORK_DIR ROOT_DIR (preserve:34-105):
# - the list is WORK_DIR/ota_backup_files_list.txt (preserve:30, 38); none,
#   or no line left after dropping empty lines and every line holding a "#"
#   (`grep -Ev "^$|[#]"`, preserve:49), backs up nothing;
# - an intact WORK_DIR/backup_files.tar.gz from an earlier try is kept
#   (preserve:54-62);
# - in ROOT_DIR (pushd, preserve:66) each listed path that exists there
#   (`[ -e "${path}" ]`, preserve:69: relative to the rootfs; a leading "/"
#   would test the running system's own file) goes into backup_files.tar
#   (tar --xattrs -cpf, preserve:84-92), which is gzipped (preserve:93-101);
#   a missing one is a warning only.
# ota_restore_customer_files WORK_DIR ROOT_DIR (preserve:107-134): the
#   archive, if any, is extracted in ROOT_DIR with tar --xattrs -xzpf.
_OTA_BACKUP_FILES_LIST="ota_backup_files_list.txt"
_OTA_BACKUP_GZ_FILE="backup_files.tar.gz"

ota_backup_customer_files() {
    local work_dir=$1 root_dir=$2 list paths=() path
    list="$work_dir/$_OTA_BACKUP_FILES_LIST"
    [ -f "$list" ] || { echo "Backup file list $list is not found"; return 0; }
    local entries
    entries=$(grep -Ev '^$|[#]' "$list") || { echo "Nothing needs to be backed up in $list"; return 0; }
    if [ -f "$work_dir/$_OTA_BACKUP_GZ_FILE" ]; then
        gzip -t "$work_dir/$_OTA_BACKUP_GZ_FILE" && return 0
        rm -f "$work_dir/$_OTA_BACKUP_GZ_FILE"
    fi
    pushd "$root_dir" > /dev/null || return 1
    while read -r path; do
        if [ -e "$path" ]; then paths+=("$path"); else echo "Warning: $path is not found"; fi
    done <<< "$entries"
    if [ "${#paths[@]}" -gt 0 ]; then
        tar --xattrs --xattrs-include='*' -cpf "$work_dir/backup_files.tar" "${paths[@]}" &&
            gzip "$work_dir/backup_files.tar" || { popd > /dev/null; return 1; }
    fi
    popd > /dev/null || return 1
}

ota_restore_customer_files() {
    local work_dir=$1 root_dir=$2 gz
    gz="$work_dir/$_OTA_BACKUP_GZ_FILE"
    [ -f "$gz" ] || return 0
    gzip -t "$gz" || return 1
    pushd "$root_dir" > /dev/null || return 1
    tar --xattrs --xattrs-include='*' -xzpf "$gz" || { popd > /dev/null; return 1; }
    popd > /dev/null || return 1
}
