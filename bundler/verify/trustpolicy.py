"""N-of-M trust policies (revision 1.4): which keys count, how many distinct ones a bundle
needs, per bundle name; checking every signature a bundle carries and deciding.

``load_policy`` reads the policy file and its key files (the one I/O edge); everything else
works on bytes and loaded keys.
"""

from __future__ import annotations

import fnmatch
import json
import re
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

from cryptography.exceptions import InvalidSignature

from ..errors import BundleError, PolicyError, SignatureError, TrustError
from ..formats.cosign import Cosignature
from ..formats.signing import SIGNATURE_BYTES, TrustedKey, load_trusted_keys
from ..layout import OUTER_SIGNATURE

POLICY_FORMAT: Final = "airgap-trust-policy/1"
_MAX_POLICY_BYTES: Final = 1 << 20  # a policy is a few hundred bytes; refuse a huge file early
_MAX_ENTRIES: Final = 256  # keys, rules, and patterns per rule (count)
_NAME_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_KEY_ID_RE: Final = re.compile(r"[0-9a-f]{64}")

Status = Literal["valid", "invalid", "unknown", "duplicate"]


def shown(text: str) -> str:
    """Untrusted (or user-given) text made safe for a one-line message."""
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")


@dataclass(frozen=True)
class Rule:
    """Bundles whose name matches one of ``patterns`` need ``threshold`` of ``key_ids``."""

    patterns: tuple[str, ...]
    key_ids: tuple[str, ...]  # distinct, in the policy's order
    threshold: int

    def matches(self, name: str) -> bool:
        return any(fnmatch.fnmatchcase(name, p) for p in self.patterns)


@dataclass(frozen=True)
class TrustPolicy:
    """Keys by key id (two files with the same public key are one key) and ordered rules."""

    keys: Mapping[str, TrustedKey]
    names: Mapping[str, str]  # key id -> the policy's name(s) for it, for messages
    rules: tuple[Rule, ...]
    source: str  # the policy file, or "--trust"
    from_trust: bool = False  # made from --trust alone: 1 of the given keys, any bundle

    def label(self, kid: str) -> str:
        name = self.names.get(kid)
        return f"{name} ({kid[:16]}...)" if name else f"{kid[:16]}..."

    def rule_for(self, bundle_name: str) -> Rule:
        """The first rule whose pattern matches ``bundle_name``.

        Raises:
            TrustError: no rule covers the name.
        """
        for rule in self.rules:
            if rule.matches(bundle_name):
                return rule
        raise TrustError(
            f"no rule of {self.source} covers bundle name {shown(bundle_name)!r}",
            member="manifest.json",
            remedy="add a [[rules]] entry whose bundles pattern matches it (fnmatch), or "
            'a catch-all bundles = ["*"]',
        )


def from_trusted_keys(keys: Sequence[TrustedKey]) -> TrustPolicy:
    """``--trust`` alone: any one of these keys suffices (1 of M), for every bundle name."""
    by_id: dict[str, TrustedKey] = {}
    for k in keys:
        by_id.setdefault(k.key_id, k)
    names = {kid: str(k.source) for kid, k in by_id.items()}
    rule = Rule(patterns=("*",), key_ids=tuple(by_id), threshold=1)
    return TrustPolicy(by_id, names, (rule,), source="--trust", from_trust=True)


# ---- the policy file --------------------------------------------------------------------


def _fail(source: Path, message: str) -> PolicyError:
    return PolicyError(
        f"{source}: {message}", remedy="fix the policy file (docs/format.md §6.2 shows one)"
    )


def load_policy(path: Path) -> TrustPolicy:
    """Read a TOML (or ``.json``) trust policy and the public key files it names.

    Key file paths are relative to the policy file's folder.

    Raises:
        PolicyError: the file cannot be read or parsed, a field is wrong, a key file cannot
            be loaded, or a rule asks for more distinct keys than it lists.
    """
    try:
        with path.open("rb") as f:
            data = f.read(_MAX_POLICY_BYTES + 1)
    except OSError as e:
        raise PolicyError(f"cannot read {path}: {e.strerror}") from e
    if len(data) > _MAX_POLICY_BYTES:
        raise _fail(path, f"larger than {_MAX_POLICY_BYTES} bytes")
    try:
        text = data.decode("utf-8")
        doc = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (UnicodeDecodeError, ValueError) as e:  # TOMLDecodeError, JSONDecodeError
        raise _fail(path, f"not valid {'JSON' if path.suffix == '.json' else 'TOML'}: {e}") from e
    if not isinstance(doc, dict):
        raise _fail(path, "not a table of format, keys and rules")

    def load_key(file: str) -> TrustedKey:
        key_path = path.parent / file
        try:
            return load_trusted_keys([key_path])[0]
        except TrustError as e:
            raise _fail(path, f"key file {key_path}: {e.message}") from e

    return parse_policy(doc, path, load_key)


def parse_policy(doc: Mapping[str, Any], source: Path, load_key: Any) -> TrustPolicy:
    """Validate a parsed policy document; ``load_key(file)`` loads one named key file.

    Raises:
        PolicyError: as ``load_policy``.
    """
    unknown = set(doc) - {"format", "keys", "rules"}
    if unknown:
        raise _fail(source, f"unknown field(s) {', '.join(sorted(map(shown, unknown)))}")
    if doc.get("format") != POLICY_FORMAT:
        raise _fail(source, f'format must be "{POLICY_FORMAT}"')
    keys_doc = doc.get("keys")
    if not isinstance(keys_doc, dict) or not keys_doc or len(keys_doc) > _MAX_ENTRIES:
        raise _fail(source, f"[keys] must name 1 to {_MAX_ENTRIES} public key files")
    by_name: dict[str, str] = {}
    by_id: dict[str, TrustedKey] = {}
    names: dict[str, list[str]] = {}
    for name, value in keys_doc.items():
        if not _NAME_RE.fullmatch(name):
            raise _fail(source, f"key name {shown(name)!r}: use letters, digits, _ . -")
        file, pinned = _key_entry(source, name, value)
        key = load_key(file)
        if pinned is not None and pinned != key.key_id:
            raise _fail(
                source, f"key {name}: {file} has key id {key.key_id[:16]}..., not {pinned[:16]}..."
            )
        by_name[name] = key.key_id
        by_id.setdefault(key.key_id, key)
        names.setdefault(key.key_id, []).append(name)
    rules_doc = doc.get("rules")
    if not isinstance(rules_doc, list) or not rules_doc or len(rules_doc) > _MAX_ENTRIES:
        raise _fail(source, f"[[rules]] must hold 1 to {_MAX_ENTRIES} rules")
    rules = tuple(_rule(source, i, r, by_name) for i, r in enumerate(rules_doc))
    return TrustPolicy(
        keys=by_id,
        names={kid: "=".join(n) for kid, n in names.items()},
        rules=rules,
        source=str(source),
    )


def _key_entry(source: Path, name: str, value: Any) -> tuple[str, str | None]:
    if isinstance(value, str) and value:
        return value, None
    if isinstance(value, dict) and set(value) <= {"file", "key_id"} and "file" in value:
        file, pinned = value["file"], value.get("key_id")
        if isinstance(file, str) and file and (pinned is None or _is_key_id(pinned)):
            return file, pinned
    raise _fail(source, f'key {name}: give a file name, or {{file = "...", key_id = "<64 hex>"}}')


def _is_key_id(value: Any) -> bool:
    return isinstance(value, str) and _KEY_ID_RE.fullmatch(value) is not None


def _rule(source: Path, i: int, doc: Any, by_name: Mapping[str, str]) -> Rule:
    where = f"rules[{i}]"
    if not isinstance(doc, dict):
        raise _fail(source, f"{where} is not a table")
    unknown = set(doc) - {"bundles", "keys", "threshold"}
    if unknown:
        raise _fail(source, f"{where}: unknown field(s) {', '.join(sorted(map(shown, unknown)))}")
    patterns = doc.get("bundles", ["*"])
    if (
        not isinstance(patterns, list)
        or not patterns
        or len(patterns) > _MAX_ENTRIES
        or not all(isinstance(p, str) and p for p in patterns)
    ):
        raise _fail(source, f"{where}: bundles must be a list of name patterns")
    key_names = doc.get("keys", list(by_name))
    if not isinstance(key_names, list) or not key_names:
        raise _fail(source, f"{where}: keys must be a list of names from [keys]")
    kids: list[str] = []
    for n in key_names:
        if not isinstance(n, str) or n not in by_name:
            raise _fail(source, f"{where}: key {shown(str(n))!r} is not in [keys]")
        if by_name[n] not in kids:  # two names (or files) for one key are one key
            kids.append(by_name[n])
    threshold = doc.get("threshold", 1)
    if isinstance(threshold, bool) or not isinstance(threshold, int) or threshold < 1:
        raise _fail(source, f"{where}: threshold must be a whole number >= 1")
    if threshold > len(kids):
        raise _fail(
            source,
            f"{where}: threshold {threshold} but only {len(kids)} distinct key(s), so no "
            "bundle could ever pass",
        )
    return Rule(patterns=tuple(patterns), key_ids=tuple(kids), threshold=threshold)


# ---- checking signatures ----------------------------------------------------------------


@dataclass(frozen=True)
class SignatureCheck:
    """What one signature turned out to be. ``key_id`` is the verified key's for a valid
    primary signature, else the id the (untrusted) signature claims, if any."""

    source: str
    key_id: str | None
    status: Status

    def to_json_dict(self, policy: TrustPolicy) -> dict[str, Any]:
        kid = self.key_id
        return {
            "source": self.source,
            "key_id": kid,
            "key": policy.names.get(kid) if kid else None,
            "status": self.status,
        }


def _verifies(key: TrustedKey, signature: bytes, message: bytes) -> bool:
    if len(signature) != SIGNATURE_BYTES:
        return False
    try:
        key.public.verify(signature, message)
    except InvalidSignature:
        return False
    return True


def check_signatures(
    manifest: bytes,
    primary: bytes,
    cosignatures: Sequence[Cosignature],
    policy: TrustPolicy,
    claimed_signer: Callable[[], str | None] | None = None,
) -> tuple[SignatureCheck, ...]:
    """Verify every signature with the policy's keys only; count each key once.

    The primary signature names no key, so every policy key is tried (as before 1.4); a
    co-signature is tried only with the policy's key of the id it claims, so it is
    ``unknown`` when the policy has no such key and ``invalid`` when that key rejects it. A
    valid signature by a key already counted is a ``duplicate``.
    """
    checks: list[SignatureCheck] = []
    counted: set[str] = set()
    for kid, key in policy.keys.items():
        if _verifies(key, primary, manifest):
            checks.append(SignatureCheck(OUTER_SIGNATURE, kid, "valid"))
            counted.add(kid)
            break
    else:
        # Which key the untrusted manifest says signed it: for the report only, read only now.
        claimed = claimed_signer() if claimed_signer is not None else None
        status0: Status = "invalid" if claimed in policy.keys else "unknown"
        checks.append(SignatureCheck(OUTER_SIGNATURE, claimed, status0))
    for co in cosignatures:
        co_key = policy.keys.get(co.key_id)
        if co_key is None:
            status: Status = "unknown"
        elif not _verifies(co_key, co.signature, manifest):
            status = "invalid"
        elif co.key_id in counted:
            status = "duplicate"
        else:
            status = "valid"
            counted.add(co.key_id)
        checks.append(SignatureCheck(co.source, co.key_id, status))
    return tuple(checks)


@dataclass(frozen=True)
class TrustDecision:
    """The rule that applied, the keys that counted, and the ones that did not sign."""

    rule: Rule
    counted: tuple[str, ...]
    missing: tuple[str, ...]

    @property
    def met(self) -> bool:
        return len(self.counted) >= self.rule.threshold

    def summary(self, policy: TrustPolicy) -> str:
        """E.g. ``2 of 2 required signatures (2 of 3 keys of policy.toml for 'iris-*')``."""
        have = min(len(self.counted), self.rule.threshold)
        text = (
            f"{have} of {self.rule.threshold} required signatures ({self.rule.threshold} of "
            f"{len(self.rule.key_ids)} keys of {policy.source} for "
            f"{', '.join(repr(shown(p)) for p in self.rule.patterns)})"
        )
        if self.counted:
            text += "; signed by " + ", ".join(policy.label(k) for k in self.counted)
        if self.missing:
            text += "; missing: " if not self.met else "; not signed by: "
            text += ", ".join(policy.label(k) for k in self.missing)
        return text

    def to_json_dict(self, policy: TrustPolicy) -> dict[str, Any]:
        return {
            "policy": policy.source,
            "bundles": list(self.rule.patterns),
            "threshold": self.rule.threshold,
            "keys": len(self.rule.key_ids),
            "counted": list(self.counted),
            "missing": list(self.missing),
            "met": self.met,
        }


def decide(
    policy: TrustPolicy, bundle_name: str, checks: Sequence[SignatureCheck]
) -> TrustDecision:
    """Count the distinct valid keys of the rule for ``bundle_name``.

    Raises:
        TrustError: no rule covers the name, or fewer distinct keys signed than it needs.
    """
    rule = policy.rule_for(bundle_name)
    valid = {c.key_id for c in checks if c.status == "valid"}
    counted = tuple(k for k in rule.key_ids if k in valid)
    missing = tuple(k for k in rule.key_ids if k not in valid)
    decision = TrustDecision(rule=rule, counted=counted, missing=missing)
    if not decision.met:
        bad = [c.source for c in checks if c.status == "invalid"]
        extra = f"; invalid, not counted: {', '.join(bad)}" if bad else ""
        raise TrustError(
            f"{len(counted)} of {rule.threshold} required signatures; missing "
            f"{rule.threshold - len(counted)} more from: "
            + ", ".join(policy.label(k) for k in missing)
            + extra,
            member="manifest.json.sig",
            remedy="have the missing key holders co-sign: airgap sign BUNDLE --key KEY",
        )
    return decision


def packer_keys(policy: TrustPolicy) -> tuple[TrustedKey, ...]:
    """The keys a document signed by its packer alone may verify with: a split bundle's part
    index (§12) and a delta's descriptor (§13). That is every key of the policy (for
    ``--trust`` alone, those keys): such a document carries one signature, so no threshold
    applies to it; the N-of-M rule applies to the manifest it is bound to.
    """
    return tuple(policy.keys.values())


def check_packer_signature(
    policy: TrustPolicy, signer: str, message: bytes, signature: bytes, *, member: str
) -> TrustedKey:
    """``signature`` over ``message`` must verify with the packer's key: the one of
    :func:`packer_keys` whose id is ``signer`` (the signed manifest's ``signer``).

    Raises:
        SignatureError: the policy has no key of that id, or that key rejects it.
    """
    for key in packer_keys(policy):
        if key.key_id == signer:
            if not _verifies(key, signature, message):
                raise SignatureError(
                    f"does not verify with the key that signed manifest.json ({signer[:16]}...)",
                    member=member,
                    remedy="get the delta again from its publisher; do not use this copy",
                )
            return key
    raise SignatureError(
        f"signed by the packer's key {signer[:16]}..., which is not a key of {policy.source}",
        member=member,
        remedy="a delta's descriptor carries its packer's signature alone (co-signatures "
        "count for its manifest only): add the packer's public key to the trusted keys",
    )


def no_valid_signature(policy: TrustPolicy, checks: Sequence[SignatureCheck]) -> BundleError:
    """The rejection when no signature verifies with a policy key (before any parsing)."""
    parts = [f"{c.source} {c.status}" for c in checks]
    return SignatureError(
        f"no signature verifies with a key of {policy.source} ({'; '.join(parts)})",
        member=OUTER_SIGNATURE,
        remedy="get a bundle signed by a key the policy lists, or check the policy's keys",
    )
