#!/bin/bash
# From NVIDIA's sample rootfs tarball to a device's rootfs, per serial.
#
#   sample-rootfs.sh Tegra_Linux_Sample-Root-Filesystem_R36.x_aarch64.tbz2 serials.txt out/
#
# Each out/<SERIAL>-<tarball> is the sample rootfs with that device's
# /etc/azaion/device.conf; extract it as NVIDIA documents, as root:
#   sudo tar -xpf out/AZJN-0042-Tegra_Linux_Sample-Root-Filesystem_R36.x_aarch64.tbz2 -C Linux_for_Tegra/rootfs
# then run apply_binaries.sh and flash.sh as usual.
set -euo pipefail
tarball=${1:?usage: sample-rootfs.sh TARBALL SERIALS OUTDIR}
serials=${2:?usage: sample-rootfs.sh TARBALL SERIALS OUTDIR}
outdir=${3:?usage: sample-rootfs.sh TARBALL SERIALS OUTDIR}
mkdir -p "$outdir"
if [ -n "${IMPRINT_OFFLINE_PASSWORD_FILE:-}" ]; then
    api=(--offline --password-file "$IMPRINT_OFFLINE_PASSWORD_FILE")
else
    api=(--api-url "${IMPRINT_API_URL:?set IMPRINT_API_URL}")
fi
imprint provision --serials "$serials" --image "$tarball" --output "$outdir/" \
    --owner "${IMPRINT_OWNER:-azaion}" --skip-existing "${api[@]}"
