"""The manifest model: strict parsing, validation and canonical bytes. No I/O."""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, cast

from ..errors import ManifestError, ResourceLimitError, UnsafeMemberError
from ..layout import OUTER_MANIFEST, PACKAGE_MODES, PAYLOAD_ROOTS, PackageMode
from . import strictjson
from .limits import DEFAULT_LIMITS, Limits
from .smoke import SmokeSpec
from .smoke import validate as validate_smoke

FORMAT: Final = "airgap-bundle/1"
_SHA256_RE: Final = re.compile(r"^[0-9a-f]{64}$")
_KEY_ID_RE: Final = _SHA256_RE
_DIGEST_RE: Final = re.compile(r"^sha256:[0-9a-f]{64}$")
# What a path may not hold (docs/format.md §3): C0 controls, DEL, C1 controls (U+0080-U+009F),
# the line and paragraph separators (U+2028, U+2029), and the bidirectional formatting
# characters (U+061C, U+200E, U+200F, U+202A-U+202E, U+2066-U+2069), which can make a name
# display as another ("Trojan Source"). Other format characters are escaped when shown.
_CONTROL_RE: Final = re.compile(
    "[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]"
)
# Only the permission bits our packer writes; setuid/setgid/sticky and anything odd is refused.
ALLOWED_MODES: Final = frozenset({0o644, 0o755})
# ustar stores names in 100 + 155 bytes; we never emit GNU or pax long-name records.
MAX_PATH_BYTES: Final = 255


@dataclass(frozen=True)
class Target:
    """The Python and platform the site-packages tree was built for."""

    python: str
    implementation: str
    abi: str
    platforms: tuple[str, ...]


@dataclass(frozen=True)
class BaseImage:
    """The Docker base image: its reference, its pinned image ID, and whether it is carried."""

    ref: str
    digest: str | None
    included: bool


@dataclass(frozen=True)
class Package:
    """One distribution in the site-packages tree."""

    name: str
    version: str


@dataclass(frozen=True)
class PayloadInfo:
    """The compressed payload: its hash and size, and what it must decompress to."""

    sha256: str
    size: int
    unpacked_size: int
    file_count: int


@dataclass(frozen=True)
class FileEntry:
    """One regular file of the payload."""

    path: str
    size: int
    mode: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    """Everything the signature binds: identity, target, and every payload file."""

    name: str
    version: str
    created: int
    signer: str
    target: Target
    entry_script: str
    mode: PackageMode
    payload: PayloadInfo
    files: tuple[FileEntry, ...]
    env: Mapping[str, str] = field(default_factory=dict)
    packages: tuple[Package, ...] = ()
    base_image: BaseImage | None = None
    expires: int | None = None
    # Optional key (revision 1.2): the smoke test bundle.toml's [smoke] table declares.
    smoke: SmokeSpec | None = None
    format: str = FORMAT

    def file_map(self) -> dict[str, FileEntry]:
        """The files keyed by path (paths are unique once parsed)."""
        return {f.path: f for f in self.files}

    def to_json_dict(self) -> dict[str, Any]:
        """The manifest as plain JSON values (the shape documented in docs/format.md)."""
        out = self._required_json()
        # Optional keys are left out when unset, so a bundle without them has the same bytes
        # as before they existed (and 1.0/1.1 readers, which ignore unknown keys, read it).
        if self.smoke is not None:
            out["smoke"] = self.smoke.to_json_dict()
        return out

    def _required_json(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "name": self.name,
            "version": self.version,
            "created": self.created,
            "expires": self.expires,
            "signer": self.signer,
            "target": {
                "python": self.target.python,
                "implementation": self.target.implementation,
                "abi": self.target.abi,
                "platforms": list(self.target.platforms),
            },
            "entry_script": self.entry_script,
            "mode": self.mode,
            "env": dict(sorted(self.env.items())),
            "base_image": None
            if self.base_image is None
            else {
                "ref": self.base_image.ref,
                "digest": self.base_image.digest,
                "included": self.base_image.included,
            },
            "packages": [{"name": p.name, "version": p.version} for p in self.packages],
            "payload": {
                "sha256": self.payload.sha256,
                "size": self.payload.size,
                "unpacked_size": self.payload.unpacked_size,
                "file_count": self.payload.file_count,
            },
            "files": [
                {"path": f.path, "size": f.size, "mode": f.mode, "sha256": f.sha256}
                for f in self.files
            ],
        }

    def to_bytes(self) -> bytes:
        """Canonical bytes: sorted keys, no insignificant whitespace, UTF-8, trailing newline.

        The signature covers exactly these bytes, so the same manifest always signs the same.
        """
        text = json.dumps(
            self.to_json_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=False
        )
        return text.encode("utf-8") + b"\n"


# ---- strict parsing ---------------------------------------------------------------------


def _invalid(message: str, *, remedy: str | None = None) -> ManifestError:
    # Every manifest error names its member, like every other rejection (one line: check,
    # member, what is wrong).
    return ManifestError(message, member=OUTER_MANIFEST, remedy=remedy)


def _strict_loads(data: bytes) -> Any:
    try:
        return strictjson.loads(data)
    except strictjson.StrictJSONError as e:
        raise _invalid(str(e)) from e


class _Fields:
    """Typed access to one JSON object, naming the exact field on every error."""

    def __init__(self, obj: Any, where: str) -> None:
        if not isinstance(obj, dict):
            raise _invalid(f"{where or 'manifest'} must be a JSON object")
        self.obj: dict[str, Any] = obj
        self.where = where

    def _name(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def raw(self, key: str) -> Any:
        if key not in self.obj:
            raise _invalid(f"missing field {self._name(key)!r}")
        return self.obj[key]

    def text(self, key: str, *, optional: bool = False) -> Any:
        value = self.obj.get(key) if optional else self.raw(key)
        if value is None and optional:
            return None
        if not isinstance(value, str) or not value:
            raise _invalid(f"field {self._name(key)!r} must be a non-empty string")
        return value

    def integer(self, key: str, *, optional: bool = False) -> Any:
        value = self.obj.get(key) if optional else self.raw(key)
        if value is None and optional:
            return None
        # bool is an int in Python; a JSON true must not pass as 1.
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise _invalid(f"field {self._name(key)!r} must be a non-negative integer")
        return value

    def boolean(self, key: str) -> bool:
        value = self.raw(key)
        if not isinstance(value, bool):
            raise _invalid(f"field {self._name(key)!r} must be true or false")
        return value

    def items(self, key: str) -> list[Any]:
        value = self.raw(key)
        if not isinstance(value, list):
            raise _invalid(f"field {self._name(key)!r} must be a list")
        return value

    def sha256(self, key: str) -> str:
        value = self.text(key)
        if not _SHA256_RE.fullmatch(value):
            raise _invalid(f"field {self._name(key)!r} must be 64 lowercase hex digits")
        return cast("str", value)


def check_member_name(path: str, limits: Limits = DEFAULT_LIMITS) -> None:
    """Refuse any path that could escape DEST or mean something else on another system.

    Raises:
        UnsafeMemberError: naming the path and the rule it breaks.
    """
    if not path:
        raise UnsafeMemberError("empty member name", member="''")
    shown = path if len(path) <= 200 else path[:200] + "..."
    bad = _CONTROL_RE.search(path)
    if bad:
        # The name is shown escaped (BundleRejected), so the message stays one line.
        what = "control" if unicodedata.category(bad.group()) == "Cc" else "bidi or line-break"
        raise UnsafeMemberError(
            f"{what} character in name (U+{ord(bad.group()):04X})", member=shown
        )
    if path.startswith("/") or (len(path) > 1 and path[1] == ":"):
        raise UnsafeMemberError("absolute path", member=shown)
    if "\\" in path:
        raise UnsafeMemberError("backslash in name", member=shown)
    parts = path.split("/")
    if any(p == ".." for p in parts):
        raise UnsafeMemberError("'..' in path", member=shown)
    if any(p in ("", ".") for p in parts):
        raise UnsafeMemberError("empty or '.' path component", member=shown)
    if len(path.encode("utf-8")) > MAX_PATH_BYTES:
        raise UnsafeMemberError(f"name longer than {MAX_PATH_BYTES} bytes", member=shown)
    if parts[0] not in PAYLOAD_ROOTS:
        raise UnsafeMemberError(
            f"top-level folder {parts[0]!r} is not one of {sorted(PAYLOAD_ROOTS)}", member=shown
        )
    if len(parts) > limits.max_path_depth:
        raise UnsafeMemberError(f"deeper than {limits.max_path_depth} levels", member=shown)


def fold_name(path: str) -> str:
    """The key under which two names collide on a case-insensitive, normalising filesystem."""
    return unicodedata.normalize("NFC", path).casefold()


def check_name_set(paths: Iterable[str]) -> None:
    """Refuse duplicates, case-fold collisions, and a file that is also another's folder.

    Raises:
        UnsafeMemberError: naming the second of the colliding paths.
    """
    seen: dict[str, str] = {}
    for path in paths:
        key = fold_name(path)
        if key in seen:
            if seen[key] == path:
                raise UnsafeMemberError("duplicate member", member=path)
            raise UnsafeMemberError(f"collides with {seen[key]!r} when case-folded", member=path)
        seen[key] = path
    # A file "a" and a file "a/b" cannot both exist; such a pair is a crafted archive.
    for key, path in seen.items():
        parent = key.rpartition("/")[0]
        while parent:
            if parent in seen:
                raise UnsafeMemberError(f"{seen[parent]!r} is a file, not a folder", member=path)
            parent = parent.rpartition("/")[0]


def parse_manifest(data: bytes, limits: Limits = DEFAULT_LIMITS) -> Manifest:
    """Parse and validate manifest bytes. Call only after the signature over them is verified.

    Raises:
        ResourceLimitError: the manifest or its file list is bigger than ``limits`` allow.
        ManifestError: not strict JSON, unknown format, missing or ill-typed fields.
        UnsafeMemberError: a listed path is unsafe, duplicated or colliding.
    """
    if len(data) > limits.max_manifest_bytes:
        raise ResourceLimitError(
            f"manifest is {len(data)} bytes, over the limit of {limits.max_manifest_bytes}",
            member="manifest.json",
        )
    top = _Fields(_strict_loads(data), "")
    fmt = top.text("format")
    if fmt != FORMAT:
        raise _invalid(
            f"unknown format version {fmt!r} (this airgap reads {FORMAT!r})",
            remedy="upgrade airgap-bundler on this host, or pack with a matching version",
        )
    target = _Fields(top.raw("target"), "target")
    platforms = target.items("platforms")
    if not all(isinstance(p, str) and p for p in platforms):
        raise _invalid("field 'target.platforms' must be a list of strings")
    mode = top.text("mode")
    if mode not in PACKAGE_MODES:
        raise _invalid(f"field 'mode' must be one of {list(PACKAGE_MODES)}, not {mode!r}")
    env_raw = top.raw("env")
    if not isinstance(env_raw, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in env_raw.items()
    ):
        raise _invalid("field 'env' must be an object of strings")
    base_raw = top.raw("base_image")
    base = None
    if base_raw is not None:
        b = _Fields(base_raw, "base_image")
        digest = b.text("digest", optional=True)
        if digest is not None and not _DIGEST_RE.fullmatch(digest):
            raise _invalid("field 'base_image.digest' must be 'sha256:' and 64 hex digits")
        base = BaseImage(ref=b.text("ref"), digest=digest, included=b.boolean("included"))
    packages = []
    for i, p in enumerate(top.items("packages")):
        pf = _Fields(p, f"packages[{i}]")
        packages.append(Package(name=pf.text("name"), version=pf.text("version")))
    pay = _Fields(top.raw("payload"), "payload")
    payload = PayloadInfo(
        sha256=pay.sha256("sha256"),
        size=pay.integer("size"),
        unpacked_size=pay.integer("unpacked_size"),
        file_count=pay.integer("file_count"),
    )
    files_raw = top.items("files")
    if len(files_raw) > limits.max_members:
        raise ResourceLimitError(
            f"{len(files_raw)} files listed, over the limit of {limits.max_members}",
            member="manifest.json",
        )
    files = []
    for i, f in enumerate(files_raw):
        ff = _Fields(f, f"files[{i}]")
        path = ff.text("path")
        check_member_name(path, limits)
        mode_bits = ff.integer("mode")
        if mode_bits not in ALLOWED_MODES:
            raise UnsafeMemberError(
                f"mode {mode_bits:o} is not one of 644, 755 (no setuid, setgid or sticky bits)",
                member=path,
            )
        files.append(
            FileEntry(
                path=path, size=ff.integer("size"), mode=mode_bits, sha256=ff.sha256("sha256")
            )
        )
    check_name_set(f.path for f in files)
    total = sum(f.size for f in files)
    if payload.file_count != len(files) or payload.unpacked_size != total:
        raise _invalid("payload.file_count / payload.unpacked_size disagree with the file list")
    if total > limits.max_unpacked_bytes:
        raise ResourceLimitError(
            f"declares {total} unpacked bytes, over the limit of {limits.max_unpacked_bytes}",
            member="manifest.json",
            remedy="the limit is fixed (docs/format.md, Limits); ask the publisher to split "
            "the model across several bundles",
        )
    entry = top.text("entry_script")
    if entry not in {f.path for f in files}:
        raise _invalid(f"entry_script {entry!r} is not a payload file")
    signer = top.text("signer")
    if not _KEY_ID_RE.fullmatch(signer):
        raise _invalid("field 'signer' must be a key id (64 lowercase hex digits)")
    created = top.integer("created")
    expires = top.integer("expires", optional=True)
    smoke = None
    if top.obj.get("smoke") is not None:
        if not isinstance(top.obj["smoke"], dict):
            raise _invalid("field 'smoke' must be a JSON object")
        smoke, problems = validate_smoke(top.obj["smoke"])
        if problems:
            raise _invalid("; ".join(problems))
    return Manifest(
        format=fmt,
        name=top.text("name"),
        version=top.text("version"),
        created=created,
        expires=expires,
        signer=signer,
        target=Target(
            python=target.text("python"),
            implementation=target.text("implementation"),
            abi=target.text("abi"),
            platforms=tuple(platforms),
        ),
        entry_script=entry,
        mode=cast("PackageMode", mode),
        env=dict(env_raw),
        base_image=base,
        packages=tuple(packages),
        payload=payload,
        files=tuple(files),
        smoke=smoke,
    )


def peek_signer(data: bytes, limits: Limits = DEFAULT_LIMITS) -> str:
    """Read only the signer key id from untrusted manifest bytes, to choose the trusted key.

    Strict JSON parsing is bounded by ``limits.max_manifest_bytes``; nothing else is trusted
    until the signature over these bytes verifies.
    """
    if len(data) > limits.max_manifest_bytes:
        raise ResourceLimitError(
            f"manifest is {len(data)} bytes, over the limit of {limits.max_manifest_bytes}",
            member="manifest.json",
        )
    obj = _strict_loads(data)
    if not isinstance(obj, dict) or not isinstance(obj.get("signer"), str):
        raise _invalid("missing field 'signer'")
    return cast("str", obj["signer"])
