# Sourced by the station scripts (station.sh, station-enc.sh,
# initrd-station.sh): the imprint flags that say how the account is made,
# in the array `api`. IMPRINT_API_URL (and IMPRINT_API_TOKEN_FILE) for the
# admin API; IMPRINT_OFFLINE_PASSWORD_FILE for test stations only (no API
# call). The token is read from its file by imprint, never put in argv.
if [ -n "${IMPRINT_OFFLINE_PASSWORD_FILE:-}" ]; then
    api=(--offline --password-file "$IMPRINT_OFFLINE_PASSWORD_FILE")
else
    api=(--api-url "${IMPRINT_API_URL:?set IMPRINT_API_URL}")
    # An `if`, not `[ ] && ...`: a sourced file's status is its last
    # command's, and a false test there would end the caller under set -e.
    if [ -n "${IMPRINT_API_TOKEN_FILE:-}" ]; then
        api+=(--api-token-file "$IMPRINT_API_TOKEN_FILE")
    fi
fi
