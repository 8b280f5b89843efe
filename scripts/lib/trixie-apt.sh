# Sourced, not run. Fetches a pinned Debian trixie package without touching the system's apt:
# a private apt configuration (its own sources list, lists and cache folders) points at the
# Debian mirror already configured on this machine, read from /etc/apt/sources.list(.d) at run
# time. No mirror host is written in the repository; the pinned sha256 is what makes any
# mirror trustworthy. image/src/fetch.rs does the same in Rust for `cloister build`.
#
#   trixie_download NAME VERSION SHA256 DEST_DIR   -> prints the path of the checked .deb
#
# The .deb is cached in $CLOISTER_CACHE/debs (default /var/cache/cloister), so a second call
# works offline.

CLOISTER_CACHE="${CLOISTER_CACHE:-/var/cache/cloister}"

# The machine's Debian mirror: the first URI of a deb source for the main archive.
trixie_mirror() {
    {
        grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{print $2}'
        grep -hs '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list |
            sed -E 's/^deb (\[[^]]*\] )?//' | awk '{print $1}'
    } | grep -E '/debian/?$' | grep -v security | head -n1
}

trixie_apt() {
    local apt="$CLOISTER_CACHE/apt-trixie"
    apt-get -q \
        -o Dir::Etc::SourceList="$apt/etc/sources.list" \
        -o Dir::Etc::SourceParts=/dev/null \
        -o Dir::Etc::PreferencesParts="$apt/etc/preferences.d" \
        -o Dir::State::Lists="$apt/lists" \
        -o Dir::Cache="$apt/cache" \
        -o Dir::State::Status=/dev/null \
        -o APT::Architecture=amd64 \
        "$@"
}

trixie_setup() {
    local apt="$CLOISTER_CACHE/apt-trixie" keyring=/usr/share/keyrings/debian-archive-keyring.gpg
    local mirror security
    mirror="$(trixie_mirror || true)"
    if [ -z "$mirror" ]; then
        echo "trixie-apt: no Debian mirror in /etc/apt/sources.list(.d)" >&2
        return 1
    fi
    mirror="${mirror%/}"
    security="${mirror%/debian}/debian-security"
    mkdir -p "$apt/lists/partial" "$apt/cache/archives/partial" "$apt/etc/preferences.d"
    cat >"$apt/etc/sources.list" <<LIST
deb [signed-by=$keyring] $mirror trixie main
deb [signed-by=$keyring] $mirror trixie-updates main
deb [signed-by=$keyring] $security trixie-security main
LIST
    trixie_apt update >&2
}

trixie_download() {
    local name="$1" version="$2" sha256="$3" cache="$CLOISTER_CACHE/debs"
    local deb="$cache/${name}_${version}.deb"
    mkdir -p "$cache"
    if [ -f "$deb" ] && echo "$sha256  $deb" | sha256sum -c --status; then
        echo "$deb"
        return 0
    fi
    trixie_setup || return 1
    local work
    work="$(mktemp -d)"
    chmod 755 "$work" # apt downloads as the _apt user
    if ! (cd "$work" && trixie_apt download "$name=$version" >&2); then
        echo "trixie-apt: $name=$version is no longer in the archive; pick the current version with" \
            "'apt-cache policy $name' on trixie and update its pin (version and sha256)" >&2
        rm -rf "$work"
        return 1
    fi
    local got
    got="$(ls "$work"/"${name}"_*.deb)"
    if ! echo "$sha256  $got" | sha256sum -c --status; then
        echo "trixie-apt: $name $version has sha256 $(sha256sum "$got" | cut -d' ' -f1), expected $sha256" >&2
        rm -rf "$work"
        return 1
    fi
    mv "$got" "$deb.tmp" && mv "$deb.tmp" "$deb"
    rm -rf "$work"
    echo "$deb"
}
