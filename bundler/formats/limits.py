"""The fixed limits that bound every untrusted length, in one frozen, documented place."""

from __future__ import annotations

from dataclasses import dataclass

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB


@dataclass(frozen=True)
class Limits:
    """Upper bounds applied before and while reading a bundle (docs/format.md, "Limits")."""

    # Manifest bytes read into memory before the signature check (bytes).
    max_manifest_bytes: int = 64 * MiB
    # Detached signature size (bytes); Ed25519 signatures are exactly 64.
    max_signature_bytes: int = 64
    # Co-signature members in one bundle, and entries in one detached signature file (count).
    max_cosignatures: int = 32
    # A detached signature file (bytes): 32 entries of about 170 bytes fit many times over.
    max_signature_file_bytes: int = 64 * KiB
    # Files listed in the manifest (count).
    max_members: int = 1_000_000
    # Path components in one member name (count).
    max_path_depth: int = 64
    # Total decompressed file bytes a manifest may declare (bytes).
    max_unpacked_bytes: int = 256 * GiB
    # zstd window: frames asking for a larger window are refused (bytes). 2**27 = 128 MiB,
    # the largest window zstd's own CLI decodes without --long or --memory.
    max_window_bytes: int = 1 << 27
    # The SBOM (sbom/bom.cdx.json), read into memory by `inspect --sbom` and `audit` (bytes);
    # far above any real one (the iris example's is ~30 KiB).
    max_sbom_bytes: int = 64 * MiB


DEFAULT_LIMITS = Limits()
