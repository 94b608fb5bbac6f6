#!/bin/sh
# The quick start, end to end on one machine:
#   online side:   keygen, pack examples/iris-sklearn into one signed bundle
#   isolated side: verify, unpack, serve, score one request, print the predictions, stop
# The isolated side runs inside a network namespace with no network at all (unshare -n,
# loopback only), as it would on an air-gapped host. With --docker it builds and runs the
# container instead of the local runner (sets up the Docker engine and base image first).
#
#   sh scripts/quickstart.sh            # local runner (no Docker engine needed)
#   sh scripts/quickstart.sh --docker   # Docker path
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
work="$here/.quickstart"
port="${PORT:-5077}"
use_docker=0
[ "${1:-}" = "--docker" ] && use_docker=1
say() { printf '\n== %s\n' "$*" >&2; }

if [ "$use_docker" = 1 ]; then
    sh "$here/scripts/setup.sh"
elif ! python3 -c "import bundler.cli" 2>/dev/null; then
    say "installing airgap-bundler"
    python3 -m pip install -q --disable-pip-version-check -e "$here" 2>&1 \
        | grep -v -e '^WARNING: Location' -e 'Running pip as the' >&2 || true
fi
airgap="python3 -m bundler"

rm -rf "$work"
mkdir -p "$work"
cd "$work"

say "online side: make a signing key"
$airgap keygen --out keys --no-passphrase

say "online side: pack examples/iris-sklearn (real wheels from PyPI, cached)"
extra=""
[ "$use_docker" = 1 ] && extra="--include-base-image"
$airgap pack "$here/examples/iris-sklearn" -o iris.airgap --key keys/airgap.key $extra
$airgap inspect iris.airgap

# The isolated side: everything below runs with no network but loopback.
cat > isolated.sh <<EOS
set -eu
ip link set lo up 2>/dev/null || true
say() { printf '\n== %s\n' "\$*" >&2; }
say "isolated side: verify the signature and every hash"
$airgap verify iris.airgap --trust keys/airgap.pub
say "isolated side: check this host first (space, noexec, Python, Docker, port)"
$airgap doctor iris.airgap --trust keys/airgap.pub --dest deploy --port $port
say "isolated side: unpack atomically"
$airgap unpack iris.airgap deploy --trust keys/airgap.pub
if [ "$use_docker" = 1 ]; then
    say "isolated side: build the image (no network) and run it"
    $airgap build deploy
    $airgap run deploy --port $port --detach --smoke
    trap '$airgap stop deploy >/dev/null 2>&1 || true' EXIT
else
    say "isolated side: serve locally in an isolated virtualenv"
    $airgap serve deploy --port $port --smoke > serve.log 2>&1 &
    pid=\$!
    trap 'kill -TERM \$pid 2>/dev/null; wait \$pid 2>/dev/null || true' EXIT
fi
python3 - <<'EOP'
import json, sys, time, urllib.request
base = "http://127.0.0.1:$port"
deadline = time.monotonic() + 120
while True:
    try:
        with urllib.request.urlopen(base + "/", timeout=2) as r:
            if r.status == 200:
                break
    except OSError:
        pass
    if time.monotonic() > deadline:
        sys.exit("server did not become healthy; see .quickstart/serve.log")
    time.sleep(0.3)
body = json.dumps({"data": [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]}).encode()
req = urllib.request.Request(base + "/score", data=body,
                             headers={"Content-Type": "application/json"})
with urllib.request.urlopen(req, timeout=10) as r:
    answer = json.loads(r.read())
print("\n== POST /score", body.decode())
print("== answer:", json.dumps(answer))
EOP
say "isolated side: the bundle's signed smoke test, against the running server"
$airgap smoke deploy --url http://127.0.0.1:$port
EOS

if [ "$use_docker" = 1 ]; then
    # The container's port is published in the host's namespace, so the request comes from
    # there; the image itself is built with networking disabled.
    sh isolated.sh
elif [ "$(id -u)" -eq 0 ] && unshare -n true 2>/dev/null; then
    unshare -n sh isolated.sh
else
    echo "(unshare -n is not available to this user: running the isolated side with the network on)" >&2
    sh isolated.sh
fi
