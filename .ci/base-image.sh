#!/bin/sh
# Build the test base image airgap-test/bookworm-python:latest when the engine lacks it.
#
# No registry exists here, so the image is made from scratch: a Debian bookworm minbase rootfs
# with python3 and python3-pip (pip runs the dynamic mode's --no-index install at container
# start), built by mmdebstrap from the machine's CONFIGURED apt sources (read by
# .ci/apt_sources.py; no mirror host name lives in this repo), then `docker import`ed.
# The rootfs tarball is cached, keyed by a hash of the sources, the package list and this
# script, so later runs only import it.
#
# Environment:
#   BASE_IMAGE       image reference to create (default: airgap-test/bookworm-python:latest)
#   BASE_IMAGE_CACHE cache folder (default: ~/.cache/airgap-bundler/base-images)
#   BASE_PACKAGES    comma-separated packages (default: python3,python3-pip); anything else
#                    than the default skips the python checks (the fleet tests' HAProxy image:
#                    BASE_IMAGE=airgap-test/bookworm-haproxy:latest BASE_PACKAGES=haproxy)
#   FORCE=1          rebuild the image even when the engine already has it
set -eu

here=$(cd "$(dirname "$0")" && pwd)
image="${BASE_IMAGE:-airgap-test/bookworm-python:latest}"
cache="${BASE_IMAGE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/airgap-bundler/base-images}"
suite=bookworm
packages="${BASE_PACKAGES:-python3,python3-pip}"
want_python="3.11"

say() { printf 'base-image: %s\n' "$*" >&2; }

if [ "${FORCE:-0}" != 1 ] && docker image inspect "$image" >/dev/null 2>&1; then
    say "engine already has $image ($(docker image inspect --format '{{.Id}}' "$image"))"
    exit 0
fi

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

sources=$(python3 "$here/apt_sources.py" "$suite")

# Pass through the host's apt settings that decide whether its sources work at all: a stale
# Release file accepted on purpose, and a proxy. mmdebstrap ignores /etc/apt/apt.conf.d.
aptopts=""
eval "$(apt-config shell valid_until Acquire::Check-Valid-Until check_date Acquire::Check-Date \
    http_proxy_opt Acquire::http::Proxy https_proxy_opt Acquire::https::Proxy)"
[ -n "${valid_until:-}" ] && aptopts="$aptopts
Acquire::Check-Valid-Until \"$valid_until\";"
[ -n "${check_date:-}" ] && aptopts="$aptopts
Acquire::Check-Date \"$check_date\";"
[ -n "${http_proxy_opt:-}" ] && aptopts="$aptopts
Acquire::http::Proxy \"$http_proxy_opt\";"
[ -n "${https_proxy_opt:-}" ] && aptopts="$aptopts
Acquire::https::Proxy \"$https_proxy_opt\";"

key=$(printf '%s\n%s\n%s\n' "$sources" "$packages" "$aptopts" | cat - "$0" | sha256sum | cut -c1-16)
flavour=python
[ "$packages" = "python3,python3-pip" ] || flavour=$(printf '%s' "$packages" | tr -c 'a-z0-9\n' '-')
tarball="$cache/$suite-$flavour-$key.tar"

if [ ! -s "$tarball" ]; then
    if ! command -v mmdebstrap >/dev/null 2>&1; then
        say "mmdebstrap missing: installing it from the configured apt sources"
        as_root apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mmdebstrap >/dev/null
    fi
    mkdir -p "$cache"
    # mmdebstrap picks its output format from the name: keep the .tar suffix.
    tmp="$cache/.tmp-$$-$suite-$flavour-$key.tar"
    trap 'rm -rf "$tmp"' EXIT
    aptconf="$cache/apt-$key.conf"
    printf '%s\n' "$aptopts" >"$aptconf"
    say "building $suite minbase rootfs with $packages (cache: $tarball)"
    # The merged-usr hook makes the /usr symlinks itself; otherwise usrmerge and perl come in.
    # Docs, man pages and translations are excluded to keep the image small; copyright files
    # stay (licence obligations). SOURCE_DATE_EPOCH keeps file times stable when it is set.
    printf '%s\n' "$sources" | as_root mmdebstrap --quiet \
        --variant=minbase \
        --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
        --include="$packages" \
        --aptopt="$aptconf" \
        --dpkgopt='path-exclude=/usr/share/man/*' \
        --dpkgopt='path-exclude=/usr/share/doc/*' \
        --dpkgopt='path-include=/usr/share/doc/*/copyright' \
        --dpkgopt='path-exclude=/usr/share/info/*' \
        --dpkgopt='path-exclude=/usr/share/locale/*' \
        --dpkgopt='path-exclude=/usr/share/lintian/*' \
        --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin' \
        "$suite" "$tmp" -
    mv "$tmp" "$tarball"
    trap - EXIT
    rm -f "$aptconf"
else
    say "using cached rootfs $tarball"
fi

say "importing $tarball as $image"
docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change "CMD [\"$(printf '%s' "$packages" | cut -d, -f1)\"]" \
    --message "bookworm minbase + $packages (mmdebstrap, key $key)" \
    "$tarball" "$image" >/dev/null

if [ "$packages" != "python3,python3-pip" ]; then
    say "ready: $image ($(docker image inspect --format '{{.Id}}' "$image"))"
    exit 0
fi
got=$(docker run --rm --network none "$image" python3 -c \
    'import sys; print("%d.%d" % sys.version_info[:2])')
if [ "$got" != "$want_python" ]; then
    say "$image has python $got; the packing target is $want_python"
    exit 1
fi
docker run --rm --network none "$image" python3 -m pip --version >/dev/null
say "ready: $image ($(docker image inspect --format '{{.Id}}' "$image"), python $got)"
