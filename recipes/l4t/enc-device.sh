# shellcheck shell=bash
# One device's encrypted rootfs containers, the same for station.sh's
# flash.sh flow and initrd-station.sh's initrd flash (station-enc.sh and
# initrd-station-enc.sh source this file). Both read `slots` (a line per
# slot: "CONTAINER_PARTITION FILE UUID_FILE BOOTPART_UUID_FILE"), serial,
# owner, api (station-api.sh), ECID and ENC_RFS_KEY, and call die.

# enc_put_back DEST KEPT SUFFIX WHO: each slot's DEST/FILE is the flash
# tool's own container again (KEPT/FILE SUFFIX, kept by --prepare). For
# the EXIT trap: each step runs even when one before it fails, and a
# container that cannot be put back is said (WHO: the station script).
enc_put_back() {
    local dest=$1 kept=$2 suffix=$3 who=$4 file
    while read -r _ file _; do
        rm -f "$dest/$file"
        cp -p "$kept/$file$suffix" "$dest/$file" ||
            echo "$who: $kept/$file$suffix could not be put back; run ROOTFS_ENC=1 $who.sh --prepare again" >&2
    done <<< "$slots"
}

# enc_stamp KEPT WORK DEST: one `imprint provision --luks-encrypt` call
# builds every slot's container from KEPT/FILE.base under the UUID in
# KEPT/FILE.base.uuid (one account call, one password in A and B, each
# container under its slot's UUID, so each opens with its own passphrase)
# into WORK; each is verified with the device's key and put in DEST
# (0600), and, right before flashing, verified again in place.
enc_stamp() {
    local kept=$1 work=$2 dest=$3 name file out inputs=()
    local key=(--l4t-ekb-key "$ENC_RFS_KEY" --ecid "$ECID")
    while read -r _ file _; do
        inputs+=(--image "$kept/$file.base" --luks-uuid-file "$kept/$file.base.uuid")
    done <<< "$slots"
    imprint provision --serial "$serial" "${inputs[@]}" --output "$work/" --owner "$owner" "${api[@]}" \
        --luks-encrypt "${key[@]}"
    while read -r _ file _; do
        out="$work/$serial-$file.base"
        imprint verify "$out" --serial "$serial" --owner "$owner" "${key[@]}" > /dev/null ||
            die "$out does not verify"
        chmod 0600 "$out"
        rm -f "$dest/$file"
        mv "$out" "$dest/$file"
    done <<< "$slots"
    while read -r name file _; do
        imprint verify "$dest/$file" --serial "$serial" --owner "$owner" "${key[@]}" > /dev/null ||
            die "$dest/$file ($name) does not carry $serial's credentials; not flashing"
    done <<< "$slots"
}
