#!/bin/sh
# Installs airgap-bundler @TOOL_VERSION@ from this kit (written by `airgap kit`; docs/kit.md).
#
#   sh install.sh [--trust airgap.pub] [--venv DIR] [--bin-dir DIR] [--python PYTHON]
#
# Order: the kit's hashes (sha256sum -c SHA256SUMS); with --trust, the Ed25519 signature of
# kit.json (openssl) and every file against it; this host against the kit's target; then a
# fresh virtualenv (python -m venv --without-pip) and pip, run from its own wheel, with no
# index, no configuration and every hash required. Nothing is installed if a check fails.
# Exit: 0 ok, 1 error, 2 usage, 3 kit rejected (a hash or the signature does not match).
set -eu

KIT_VERSION='@TOOL_VERSION@'
KIT_PYTHON='@PYTHON@'
KIT_ARCH='@ARCH@'
KIT_LIBC='@LIBC@'
KIT_LIBC_MIN='@LIBC_MIN@'
PIP_WHEEL='@PIP_WHEEL@'

usage() {
    cat <<EOF
usage: sh install.sh [--trust KEY.pub] [--venv DIR] [--bin-dir DIR] [--python PYTHON]

Installs airgap-bundler $KIT_VERSION (python $KIT_PYTHON, $KIT_ARCH) from this kit.
  --trust KEY    also check kit.json's signature with this Ed25519 public key (openssl)
  --venv DIR     the new virtualenv (default: \$HOME/.local/share/airgap-bundler/venv);
                 it must not exist yet
  --bin-dir DIR  put a symlink to airgap there (e.g. /usr/local/bin or \$HOME/.local/bin);
                 without it, the PATH line to add is printed
  --python PY    the interpreter for the virtualenv (default: python$KIT_PYTHON, else python3)
EOF
}

fail() { printf 'install.sh: error: %s\n' "$*" >&2; exit 1; }
reject() { printf 'install.sh: kit rejected: %s\n' "$*" >&2; exit 3; }
# A tool's complaint as one printable line: file names in a crafted kit may hold control
# characters (terminal escapes), so everything but printable bytes becomes '?'.
oneline() { grep -v '^sha256sum: WARNING' | head -n 3 | tr '\n' ' ' | tr -c '[:print:]' '?'; }

trust='' venv='' bindir='' python=''
while [ $# -gt 0 ]; do
    case $1 in
        --trust|--venv|--bin-dir|--python)
            [ $# -ge 2 ] || { printf 'install.sh: %s needs a value\n' "$1" >&2; exit 2; }
            case $1 in
                --trust) trust=$2 ;;
                --venv) venv=$2 ;;
                --bin-dir) bindir=$2 ;;
                --python) python=$2 ;;
            esac
            shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) printf 'install.sh: unknown option %s\n' "$1" >&2; usage >&2; exit 2 ;;
    esac
done

here=$(cd "$(dirname "$0")" && pwd -P)
[ -n "$venv" ] || venv="${HOME:?set HOME or pass --venv}/.local/share/airgap-bundler/venv"
case $venv in /*) ;; *) venv="$(pwd -P)/$venv" ;; esac
if [ -n "$trust" ]; then
    case $trust in /*) ;; *) trust="$(pwd -P)/$trust" ;; esac
fi
if [ -z "$python" ]; then
    # Run it, not only look it up: a version manager's shim may exist and refuse to run.
    if "python$KIT_PYTHON" -c '' >/dev/null 2>&1; then python="python$KIT_PYTHON"
    else python=python3; fi
fi
"$python" -c '' >/dev/null 2>&1 || fail "cannot run $python; pass --python PATH"
# Nothing from the environment may steer the interpreter or pip.
unset PYTHONPATH PYTHONHOME PYTHONSTARTUP PYTHONUSERBASE PYTHONSAFEPATH
PIP_CONFIG_FILE=/dev/null
export PIP_CONFIG_FILE

cd "$here"

# 1. The kit's hashes, before anything in it is used.
command -v sha256sum >/dev/null 2>&1 || fail "sha256sum is needed (coreutils)"
[ -f SHA256SUMS ] || reject "integrity: SHA256SUMS: missing"
if ! sums_out=$(sha256sum -c --strict --quiet SHA256SUMS 2>&1); then
    reject "integrity: $(printf '%s\n' "$sums_out" | oneline)(sha256sum -c SHA256SUMS); get the kit again from its publisher"
fi

# 2. With --trust: the signed list (kit.json) is the authority, SHA256SUMS must be exactly it.
if [ -n "$trust" ]; then
    command -v openssl >/dev/null 2>&1 || fail "openssl (3.0 or later) is needed for --trust"
    [ -f "$trust" ] || fail "--trust: no such file: $trust"
    if ! openssl pkeyutl -verify -pubin -inkey "$trust" -rawin \
            -in kit.json -sigfile kit.json.sig >/dev/null 2>&1; then
        reject "signature: kit.json.sig: does not verify with $trust; get the kit again from its publisher, or pass the publisher's key"
    fi
    if ! listed=$("$python" -E -s -c '
import json, sys
m = json.load(open("kit.json", "rb"))
assert m["format"] == "airgap-kit/1", "unknown format"
for f in m["files"]:
    p = f["path"]
    assert not p.startswith("/") and ".." not in p.split("/") and "\n" not in p, p
    print(f["sha256"] + "  " + p)
' 2>&1); then
        reject "manifest: kit.json: $(printf '%s\n' "$listed" | tail -n 1 | oneline)"
    fi
    if ! check_out=$(printf '%s\n' "$listed" | sha256sum -c --strict --quiet - 2>&1); then
        reject "integrity: $(printf '%s\n' "$check_out" | oneline)(against the signed kit.json)"
    fi
    echo "kit signature verified with $trust"
else
    echo "warning: kit.json's signature was not checked; pass --trust KEY.pub (or check it with openssl first, see docs/kit.md)" >&2
fi

# 3. This host against the kit's target: one line naming both sides.
if ! host_out=$("$python" -E -s - "$KIT_PYTHON" "$KIT_ARCH" "$KIT_LIBC" "$KIT_LIBC_MIN" 2>&1 <<'PYEOF'
import platform, sys
want, arch, libc, floor = sys.argv[1:5]
have = "%d.%d" % sys.version_info[:2]
problems = []
if sys.implementation.name != "cpython":
    problems.append("%s is not CPython" % sys.implementation.name)
if have != want:
    problems.append("python is %s, the kit is for %s" % (have, want))
if platform.machine() != arch:
    problems.append("this machine is %s, the kit is for %s" % (platform.machine(), arch))
if libc == "glibc":
    name, version = platform.libc_ver()
    parts = tuple(int(x) for x in version.split(".")[:2] if x.isdigit())
    need = tuple(int(x) for x in floor.split("."))
    if name != "glibc" or parts < need:
        problems.append("the kit needs glibc >= %s, this host has %s" % (floor, (name + " " + version).strip() or "no glibc"))
elif libc == "musl" and platform.libc_ver()[0] == "glibc":
    problems.append("the kit is for musl, this host has glibc %s" % platform.libc_ver()[1])
if problems:
    print("; ".join(problems))
    sys.exit(1)
PYEOF
); then
    fail "host check: $(printf '%s\n' "$host_out" | tail -n 1 | oneline); make a kit for this host on the online side (airgap kit --python X.Y --platform TAG)"
fi

# 4. A fresh virtualenv, removed again if anything below fails.
[ ! -e "$venv" ] || fail "$venv already exists; remove it or pass another --venv"
mkdir -p "$(dirname "$venv")"
cleanup() { rm -rf "$venv"; }
trap cleanup EXIT
trap 'exit 130' INT TERM HUP
"$python" -E -s -m venv --without-pip "$venv" \
    || fail "cannot make a virtualenv with $python -m venv (install the venv module, e.g. Debian's python3-venv)"
"$venv/bin/python" -E -s "$here/$PIP_WHEEL/pip" --isolated install \
    --no-index --find-links "$here/wheels" --require-hashes --only-binary :all: \
    --no-cache-dir --disable-pip-version-check --no-input --quiet \
    -r "$here/requirements.lock" \
    || fail "pip install from the kit failed (output above)"
"$venv/bin/airgap" --version >/dev/null || fail "$venv/bin/airgap does not run"
trap - EXIT INT TERM HUP

# 5. On PATH.
if [ -n "$bindir" ]; then
    mkdir -p "$bindir"
    ln -sf "$venv/bin/airgap" "$bindir/airgap"
    echo "installed airgap-bundler $KIT_VERSION in $venv; $bindir/airgap -> $venv/bin/airgap"
else
    echo "installed airgap-bundler $KIT_VERSION in $venv; add it to PATH:"
    echo "  export PATH=\"$venv/bin:\$PATH\""
fi
