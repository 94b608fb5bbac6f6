#!/bin/sh
# Install everything the tests need on a Debian machine: apt packages, the project with its
# dev dependencies, a Docker engine (Debian's docker.io, started when none answers) and the
# test base image (built with mmdebstrap from this machine's apt sources; no registry).
# Idempotent: a second run only checks.
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
say() { printf 'setup: %s\n' "$*" >&2; }

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

need=""
for pair in zstd:zstd unshare:util-linux ip:iproute2 wrk:wrk jq:jq openssl:openssl \
            mmdebstrap:mmdebstrap dockerd:docker.io ld-musl-config:musl \
            docker-registry:docker-registry htpasswd:apache2-utils; do
    cmd=${pair%%:*}; pkg=${pair#*:}
    command -v "$cmd" >/dev/null 2>&1 || need="$need $pkg"
done
if [ -n "$need" ]; then
    say "installing Debian packages:$need"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $need >/dev/null
fi

say "installing airgap-bundler (editable) with its dev dependencies"
python3 -m pip install -q --disable-pip-version-check -e "$here[dev]" 2>&1 \
    | grep -v -e '^WARNING: Location' -e 'Running pip as the' >&2 || true
python3 -c "import bundler, pytest" || { say "pip install failed"; exit 1; }

# The fleet tests start their own registry on 127.0.0.1; the package's own service (its config
# binds every interface) must not run.
if pgrep -f "docker-registry serve /etc/docker/registry/config.yml" >/dev/null 2>&1; then
    say "stopping the packaged docker-registry service (it binds every interface)"
    as_root pkill -f "docker-registry serve /etc/docker/registry/config.yml" || true
fi

sh "$here/.ci/docker-engine.sh"
sh "$here/.ci/base-image.sh"
# The fleet tests' load balancer in front of a Swarm service: Debian's HAProxy, no registry.
BASE_IMAGE=airgap-test/bookworm-haproxy:latest BASE_PACKAGES=haproxy sh "$here/.ci/base-image.sh"
