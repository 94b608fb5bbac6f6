"""The CycloneDX SBOM every bundle carries (sbom/bom.cdx.json): built from the real iris
example's trees, valid CycloneDX 1.6, reproducible, printed by `airgap inspect --sbom`, and
signed like every other file."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import craft
import pytest
from conftest import KeyPair
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator

from bundler.formats.manifest import BaseImage, parse_manifest
from bundler.pack.lock import parse_lock
from bundler.pack.sbom import Distribution, Model, ModelFile, SbomInputs, build_sbom

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "iris-sklearn"
AIRGAP = [sys.executable, "-m", "bundler"]
SBOM = "sbom/bom.cdx.json"
EPOCH = 1700000000


def airgap(
    *args: str | Path, cwd: Path, check: bool = True, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    cmd = [*AIRGAP, *map(str, args)]
    proc = subprocess.run(
        cmd, cwd=cwd, capture_output=True, env={**os.environ, **(env or {})}, timeout=900
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} exited {proc.returncode}:\n{proc.stdout!r}\n{proc.stderr!r}")
    return proc


def payload_member(bundle: Path, member: str, work: Path) -> bytes:
    """A payload member extracted with the standard tools (tar, zstd), as a reviewer would."""
    tree = work / f"tree-{bundle.stem}"
    tree.mkdir(exist_ok=True)
    subprocess.run(
        f"tar -xOf {bundle} payload.tar.zst | zstd -d | tar -x -C {tree} {member}",
        shell=True,
        check=True,
    )
    return (tree / member).read_bytes()


@pytest.fixture(scope="module")
def iris(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The iris example packed through the real CLI with real wheels from PyPI."""
    work = tmp_path_factory.mktemp("sbom")
    airgap("keygen", "--out", "keys", "--no-passphrase", cwd=work)
    airgap(
        *("pack", EXAMPLE, "-o", "iris.airgap", "--key", "keys/airgap.key", "-q"),
        *("--bytecode", "none"),
        cwd=work,
        env={"SOURCE_DATE_EPOCH": str(EPOCH)},
    )
    return work


@pytest.fixture(scope="module")
def bom_bytes(iris: Path) -> bytes:
    return payload_member(iris / "iris.airgap", SBOM, iris)


@pytest.fixture(scope="module")
def bom(bom_bytes: bytes) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(bom_bytes)
    return doc


@pytest.fixture(scope="module")
def manifest(iris: Path) -> Any:
    subprocess.run(["tar", "-xf", "iris.airgap", "manifest.json"], cwd=iris, check=True)
    return parse_manifest((iris / "manifest.json").read_bytes())


def _props(comp: dict[str, Any]) -> dict[str, str]:
    return {p["name"]: p["value"] for p in comp.get("properties", [])}


def _libraries(bom: dict[str, Any], location: str) -> dict[str, dict[str, Any]]:
    return {
        c["name"].lower(): c
        for c in bom["components"]
        if c["type"] == "library" and _props(c).get("airgap:location") == location
    }


@pytest.mark.network
@pytest.mark.slow
def test_the_sbom_is_listed_and_signed_in_the_manifest(
    iris: Path, bom_bytes: bytes, manifest: Any
) -> None:
    entry = manifest.file_map()[SBOM]
    assert entry.sha256 == hashlib.sha256(bom_bytes).hexdigest()
    assert entry.size == len(bom_bytes)
    assert entry.mode == 0o644
    out = airgap("verify", "iris.airgap", "--trust", "keys/airgap.pub", "--json", cwd=iris)
    assert json.loads(out.stdout)["verified"] is True


@pytest.mark.network
@pytest.mark.slow
def test_the_sbom_is_valid_cyclonedx_1_6(bom_bytes: bytes, bom: dict[str, Any]) -> None:
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(bom_bytes.decode()) is None
    assert bom["bomFormat"] == "CycloneDX"
    assert bom["specVersion"] == "1.6"
    assert bom["serialNumber"].startswith("urn:uuid:")
    # The timestamp is the bundle's `created` (SOURCE_DATE_EPOCH), not the packing clock.
    assert bom["metadata"]["timestamp"] == "2023-11-14T22:13:20+00:00"
    assert bom["metadata"]["component"]["name"] == "iris-sklearn"
    assert bom["metadata"]["component"]["version"] == "1.0.0"


@pytest.mark.network
@pytest.mark.slow
def test_every_distribution_has_purl_wheel_hash_and_licence(
    bom: dict[str, Any], manifest: Any
) -> None:
    site = _libraries(bom, "site-packages")
    # Exactly the distributions the manifest lists for site-packages/.
    assert set(site) == {p.name.lower() for p in manifest.packages}
    locked = {r.name: r for r in parse_lock(EXAMPLE / "requirements.lock")}
    for name, comp in site.items():
        version = next(p.version for p in manifest.packages if p.name.lower() == name)
        assert comp["version"] == version
        assert comp["purl"] == f"pkg:pypi/{locked[name].name}@{version}"
        (digest,) = comp["hashes"]
        assert digest["alg"] == "SHA-256"
        # The wheel's own sha256: one of the hashes the lock pinned for that package.
        assert digest["content"] in locked[name].hashes, name
        assert _props(comp)["airgap:wheel"].endswith(".whl")
        assert comp.get("licenses"), f"{name} has no licence"
    # Licences as the metadata states them: PEP 639 expressions where given.
    assert site["scikit-learn"]["licenses"] == [{"expression": "BSD-3-Clause"}]
    assert site["numpy"]["licenses"][0]["expression"].startswith("BSD-3-Clause")
    # scipy's License field is the licence text: its classifier names it instead.
    assert site["scipy"]["licenses"] == [{"license": {"name": "BSD License"}}]


@pytest.mark.network
@pytest.mark.slow
def test_model_runtime_and_base_image_components(bom: dict[str, Any], manifest: Any) -> None:
    by_type: dict[str, list[dict[str, Any]]] = {}
    for c in bom["components"]:
        by_type.setdefault(c["type"], []).append(c)
    (model,) = by_type["machine-learning-model"]
    assert _props(model)["airgap:path"] == "model/model"
    files = {f.path: f.sha256 for f in manifest.files if f.path.startswith("model/")}
    nested = {c["bom-ref"]: c["hashes"][0]["content"] for c in model["components"]}
    assert nested == files  # every model file, hashed as the signed manifest has it
    listing = "".join(f"{h}  {p}\n" for p, h in sorted(files.items()))
    assert model["hashes"][0]["content"] == hashlib.sha256(listing.encode()).hexdigest()

    runtime = next(c for c in by_type["application"] if c["name"] == "airgap_runtime")
    libs = _libraries(bom, "runtime/lib")
    assert {"gunicorn", "werkzeug", "markupsafe", "packaging"} <= set(libs)
    deps = {d["ref"]: set(d.get("dependsOn", [])) for d in bom["dependencies"]}
    assert deps[runtime["bom-ref"]] == {c["bom-ref"] for c in libs.values()}
    # The bundle depends on its model, runtime and base image.
    top = deps[bom["metadata"]["component"]["bom-ref"]]
    assert {model["bom-ref"], runtime["bom-ref"]} <= top

    (base,) = by_type["container"]
    assert manifest.base_image is not None
    assert _props(base)["airgap:image-ref"] == manifest.base_image.ref
    assert _props(base)["airgap:included"] == "false"
    if manifest.base_image.digest is not None:  # pinned when an engine knew the image
        assert base["hashes"] == [
            {"alg": "SHA-256", "content": manifest.base_image.digest.removeprefix("sha256:")}
        ]
        assert base["bom-ref"] in top


@pytest.mark.network
@pytest.mark.slow
def test_inspect_sbom_prints_the_signed_bytes(iris: Path, bom_bytes: bytes) -> None:
    out = airgap("inspect", "--sbom", "iris.airgap", cwd=iris)
    assert out.stdout == bom_bytes
    assert b"NOT verified" in out.stderr
    out = airgap("inspect", "--sbom", "iris.airgap", "--trust", "keys/airgap.pub", cwd=iris)
    assert out.stdout == bom_bytes
    assert out.stderr.startswith(b"sbom/bom.cdx.json: verified (signed by ")


@pytest.mark.network
@pytest.mark.slow
def test_inspect_sbom_with_the_wrong_key_is_rejected(iris: Path) -> None:
    airgap("keygen", "--out", "other", "--no-passphrase", cwd=iris)
    proc = airgap(
        "inspect", "--sbom", "iris.airgap", "--trust", "other/airgap.pub", cwd=iris, check=False
    )
    assert proc.returncode == 3
    assert proc.stdout == b""
    assert proc.stderr.startswith(b"bundle rejected: signature: manifest.json.sig: signed by")


@pytest.mark.network
@pytest.mark.slow
def test_a_second_pack_gives_the_same_sbom(iris: Path, bom_bytes: bytes) -> None:
    airgap(
        *("pack", EXAMPLE, "-o", "again.airgap", "--key", "keys/airgap.key", "-q"),
        *("--bytecode", "none", "--threads", "2"),
        cwd=iris,
        env={"SOURCE_DATE_EPOCH": str(EPOCH)},
    )
    assert payload_member(iris / "again.airgap", SBOM, iris) == bom_bytes
    assert (iris / "again.airgap").read_bytes() == (iris / "iris.airgap").read_bytes()


# ---- the pure builder, on crafted metadata ----------------------------------------------


def _metadata(name: str, version: str, *headers: str) -> bytes:
    lines = ["Metadata-Version: 2.4", f"Name: {name}", f"Version: {version}", *headers]
    return ("\n".join(lines) + "\n\nThe description.\n").encode()


def _inputs(**changes: Any) -> SbomInputs:
    values: dict[str, Any] = {
        "name": "demo",
        "version": "1.0",
        "created": EPOCH,
        "tool_version": "0.1.0",
        "distributions": (
            Distribution(
                _metadata("Alpha_Pkg", "1.0", "License-Expression: MIT OR Apache-2.0"),
                "site-packages",
                "alpha_pkg-1.0-py3-none-any.whl",
                "a" * 64,
            ),
            Distribution(
                _metadata("beta", "2.0", "License: BSD-3-Clause", "Requires-Dist: alpha-pkg"),
                "site-packages",
                "beta-2.0-py3-none-any.whl",
                "b" * 64,
            ),
            Distribution(
                _metadata(
                    "gamma",
                    "3.0",
                    "License: Copyright (c) someone\n  All rights reserved, long text follows",
                    "Classifier: License :: OSI Approved :: MIT License",
                ),
                "site-packages",
                "gamma-3.0-py3-none-any.whl",
                "c" * 64,
            ),
            Distribution(
                _metadata("beta", "2.0", "License: My Own Licence © Jörg"),
                "runtime/lib",
                "beta-2.0-py3-none-any.whl",
                "b" * 64,
            ),
        ),
        "models": (Model("model/clf.pkl", (ModelFile("model/clf.pkl", "d" * 64),)),),
        "base_image": BaseImage(
            ref="reg:5000/base:1.2", digest="sha256:" + "e" * 64, included=True
        ),
    }
    values.update(changes)
    return SbomInputs(**values)


def test_licences_from_expression_license_field_and_classifiers() -> None:
    doc = json.loads(build_sbom(_inputs()))
    libs = {
        (c["name"], _props(c)["airgap:location"]): c
        for c in doc["components"]
        if c["type"] == "library"
    }
    assert libs[("Alpha_Pkg", "site-packages")]["licenses"] == [{"expression": "MIT OR Apache-2.0"}]
    assert libs[("Alpha_Pkg", "site-packages")]["purl"] == "pkg:pypi/alpha-pkg@1.0"
    assert libs[("beta", "site-packages")]["licenses"] == [{"license": {"id": "BSD-3-Clause"}}]
    assert libs[("gamma", "site-packages")]["licenses"] == [{"license": {"id": "MIT"}}]
    # Non-ASCII metadata (UTF-8, as core metadata is) stays text.
    assert libs[("beta", "runtime/lib")]["licenses"] == [
        {"license": {"name": "My Own Licence © Jörg"}}
    ]
    # The same distribution in two trees: two components, unique bom-refs.
    refs = [c["bom-ref"] for c in doc["components"]]
    assert len(refs) == len(set(refs))
    deps = {d["ref"]: d.get("dependsOn", []) for d in doc["dependencies"]}
    assert deps["site-packages/beta@2.0"] == ["site-packages/alpha-pkg@1.0"]
    (model,) = [c for c in doc["components"] if c["type"] == "machine-learning-model"]
    assert model["hashes"] == [{"alg": "SHA-256", "content": "d" * 64}]
    (base,) = [c for c in doc["components"] if c["type"] == "container"]
    assert (base["name"], base["version"]) == ("reg:5000/base", "1.2")
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(json.dumps(doc)) is None


def test_same_inputs_same_bytes_and_the_serial_follows_the_content() -> None:
    first = build_sbom(_inputs())
    assert build_sbom(_inputs()) == first
    # Input order does not matter: the components are sorted.
    shuffled = _inputs(distributions=tuple(reversed(_inputs().distributions)))
    assert build_sbom(shuffled) == first
    other = build_sbom(_inputs(version="1.1"))
    serial = json.loads(first)["serialNumber"]
    assert json.loads(other)["serialNumber"] != serial
    later = json.loads(build_sbom(_inputs(created=EPOCH + 60)))
    assert later["metadata"]["timestamp"] == "2023-11-14T22:14:20+00:00"
    assert later["serialNumber"] != serial


def test_a_tampered_sbom_member_is_rejected_like_any_file(
    tmp_path: Path, publisher: KeyPair
) -> None:
    good = build_sbom(_inputs())
    evil = good.replace(b'"MIT OR Apache-2.0"', b'"MIT OR Apache-9.9"')
    assert len(evil) == len(good)
    files = [*craft.DEFAULT_FILES, craft.F(SBOM, good)]
    members = [craft.member(f.path, evil if f.path == SBOM else f.data, mode=f.mode) for f in files]
    parts = craft.craft(publisher.private, files=files, payload_members=members)
    bundle = tmp_path / "tampered.airgap"
    bundle.write_bytes(parts.bundle)
    for args in (
        ("inspect", "--sbom", bundle),
        ("inspect", "--sbom", bundle, "--trust", publisher.pub),
        ("verify", bundle, "--trust", publisher.pub),
    ):
        proc = airgap(*args, cwd=tmp_path, check=False)
        assert proc.returncode == 3, args
        assert proc.stdout == b""
        assert proc.stderr.decode().startswith(
            "bundle rejected: integrity: sbom/bom.cdx.json: content differs from the manifest"
        )


def test_inspect_sbom_of_a_bundle_without_one_says_so(make_bundle: Any, tmp_path: Path) -> None:
    bundle = make_bundle("old.airgap")
    proc = airgap("inspect", "--sbom", bundle, cwd=tmp_path, check=False)
    assert proc.returncode == 1
    assert b"has no sbom/bom.cdx.json" in proc.stderr
    assert b"pack it again" in proc.stderr
