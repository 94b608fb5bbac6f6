#!/bin/sh
# Make sure a Docker engine answers: install Debian's docker.io when dockerd is missing, start
# dockerd in the background when nothing answers, wait (bounded) until it does. Idempotent.
#
# Environment:
#   DOCKERD_LOG      where dockerd writes its log (default: /tmp/airgap-dockerd.log)
#   DOCKERD_TIMEOUT  seconds to wait for the engine to answer (default: 60)
set -eu

log="${DOCKERD_LOG:-/tmp/airgap-dockerd.log}"
timeout="${DOCKERD_TIMEOUT:-60}"

say() { printf 'docker-engine: %s\n' "$*" >&2; }

# `docker version --format` needs both ends to answer, unlike a bare `docker --version`.
engine_answers() {
    docker version --format '{{.Server.Version}}' >/dev/null 2>&1
}

if command -v docker >/dev/null 2>&1 && engine_answers; then
    say "engine answers (server $(docker version --format '{{.Server.Version}}'))"
    exit 0
fi

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

if ! command -v dockerd >/dev/null 2>&1; then
    say "dockerd missing: installing Debian's docker.io from the configured apt sources"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io >/dev/null
fi

if ! command -v docker >/dev/null 2>&1; then
    say "no docker client on PATH after installing docker.io"
    exit 1
fi

# Start dockerd only when no daemon process is already starting up (idempotent re-runs).
if pgrep -x dockerd >/dev/null 2>&1; then
    say "a dockerd process exists; waiting for it at ${DOCKER_HOST:-the default socket}"
else
    say "starting dockerd (log: $log)"
    # containerd is started by dockerd itself when no system containerd is running.
    as_root sh -c "nohup dockerd >'$log' 2>&1 </dev/null &"
fi

waited=0
while ! engine_answers; do
    if [ "$waited" -ge "$timeout" ]; then
        say "engine did not answer within ${timeout}s; last lines of $log:"
        tail -n 40 "$log" >&2 2>/dev/null || say "(no log at $log)"
        exit 1
    fi
    sleep 1
    waited=$((waited + 1))
done
say "engine answers after ${waited}s (server $(docker version --format '{{.Server.Version}}'))"
