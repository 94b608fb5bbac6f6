"""The bundle's CycloneDX 1.6 SBOM: distribution metadata and hashes in, canonical bytes out.

Pure: the caller reads the ``.dist-info/METADATA`` files of the built trees and hashes the
wheels and the model; this module only turns those values into ``sbom/bom.cdx.json`` with
``cyclonedx-python-lib``. Nothing here runs the target interpreter (it may not exist on the
packing machine), and nothing depends on the clock: the timestamp is the bundle's
``created`` and the serial number is derived from the content.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from email.message import Message
from email.parser import HeaderParser
from email.policy import compat32
from typing import Final

from cyclonedx.contrib.license.factories import LicenseFactory
from cyclonedx.model import HashAlgorithm, HashType, Property
from cyclonedx.model.bom import Bom, BomMetaData
from cyclonedx.model.component import Component, ComponentType
from cyclonedx.model.license import DisjunctiveLicense, LicenseExpression
from cyclonedx.model.tool import ToolRepository
from cyclonedx.output.json import JsonV1Dot6
from cyclonedx.spdx import is_expression
from packageurl import PackageURL
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from ..errors import SiteTreeError
from ..formats.manifest import BaseImage
from ..layout import RUNTIME_LIB, SITE_DIR

# Namespace of the content-derived serial number (uuid5 of the BOM's own digest): any
# fixed value works; this one is uuid5(NAMESPACE_URL, "airgap-bundler/sbom").
_SERIAL_NAMESPACE: Final = uuid.uuid5(uuid.NAMESPACE_URL, "airgap-bundler/sbom")
_PLACEHOLDER_SERIAL: Final = uuid.UUID(int=0)
# A License field longer than this is the licence's text, not a name (core metadata allows
# both); the SBOM then names it by the distribution instead of copying pages of text.
_MAX_LICENSE_NAME: Final = 100
PROP_LOCATION: Final = "airgap:location"  # the payload folder a distribution is installed in
PROP_WHEEL: Final = "airgap:wheel"  # the wheel file name it was installed from

# Trove classifiers (``License :: ...``) whose SPDX id is unambiguous. Others become a named
# licence with the classifier's last part, which is what the classifier states.
_CLASSIFIER_SPDX: Final = {
    "License :: OSI Approved :: Apache Software License": "Apache-2.0",
    "License :: OSI Approved :: BSD License": None,  # which BSD is not said
    "License :: OSI Approved :: MIT License": "MIT",
    "License :: OSI Approved :: MIT No Attribution License (MIT-0)": "MIT-0",
    "License :: OSI Approved :: ISC License (ISCL)": "ISC",
    "License :: OSI Approved :: Python Software Foundation License": "PSF-2.0",
    "License :: OSI Approved :: Mozilla Public License 2.0 (MPL 2.0)": "MPL-2.0",
    "License :: OSI Approved :: GNU General Public License v2 (GPLv2)": "GPL-2.0-only",
    "License :: OSI Approved :: GNU General Public License v3 (GPLv3)": "GPL-3.0-only",
    "License :: OSI Approved :: GNU Lesser General Public License v3 (LGPLv3)": "LGPL-3.0-only",
    "License :: OSI Approved :: The Unlicense (Unlicense)": "Unlicense",
    "License :: OSI Approved :: Zope Public License": "ZPL-2.1",
    "License :: Public Domain": None,
}


@dataclass(frozen=True)
class Distribution:
    """One installed distribution: its METADATA bytes, where it is, and its wheel."""

    metadata: bytes  # the .dist-info/METADATA file, as installed
    location: str  # SITE_DIR or RUNTIME_LIB
    wheel: str  # the wheel's file name
    wheel_sha256: str  # of the wheel file, as the lock pinned it


@dataclass(frozen=True)
class ModelFile:
    """One file of a model, by payload path."""

    path: str
    sha256: str


@dataclass(frozen=True)
class Model:
    """One registered model (a file or a folder under ``model/``)."""

    path: str  # its payload path, e.g. "model/model" or "model/clf.pkl"
    files: tuple[ModelFile, ...]  # one entry for a file model, every file for a folder
    name: str | None = None  # [[models]] name and version, when given
    version: str | None = None


@dataclass(frozen=True)
class SbomInputs:
    """Everything the SBOM says, as plain values."""

    name: str  # the bundle's name and version
    version: str
    created: int  # the bundle's `created` (seconds since the epoch, UTC)
    tool_version: str  # airgap-bundler's version: it made the tree and the runtime
    distributions: tuple[Distribution, ...]
    models: tuple[Model, ...]
    base_image: BaseImage | None = None


@dataclass(frozen=True)
class _Meta:
    name: str
    version: str
    licenses: tuple[LicenseExpression | DisjunctiveLicense, ...]
    requires: tuple[str, ...]  # canonical names of unconditional and marker-only requirements
    summary: str | None


def _parse_metadata(data: bytes, wheel: str) -> _Meta:
    """Name, version, licence and requirements from core metadata (RFC 822 headers).

    Raises:
        SiteTreeError: no Name or Version (the installer checked the wheel, so a tree with
            such a METADATA was not built by it).
    """
    # Core metadata is UTF-8 (parsed as text, so a non-ASCII header stays a str); compat32
    # keeps folded header lines as written; the body (the description) is not parsed.
    msg = HeaderParser(policy=compat32).parsestr(data.decode("utf-8", errors="replace"))
    name, version = msg.get("Name"), msg.get("Version")
    if not name or not version:
        raise SiteTreeError(f"{wheel}: METADATA has no Name or Version", remedy="rebuild the wheel")
    requires: list[str] = []
    for line in msg.get_all("Requires-Dist") or []:
        try:
            req = Requirement(str(line))
        except InvalidRequirement:
            continue  # the SBOM's dependency graph is informational; a bad line adds no edge
        if req.marker is not None and "extra" in str(req.marker):
            continue  # needed only with an extra the lock may not have installed
        requires.append(canonicalize_name(req.name))
    summary = msg.get("Summary")
    return _Meta(
        name=str(name).strip(),
        version=str(version).strip(),
        licenses=_licenses(msg.get("License-Expression"), msg.get("License"), msg, str(name)),
        requires=tuple(sorted(set(requires))),
        summary=str(summary).strip() if summary else None,
    )


def _licenses(
    expression: str | None, declared: str | None, msg: Message, name: str
) -> tuple[LicenseExpression | DisjunctiveLicense, ...]:
    """The licence, most precise source first: License-Expression (PEP 639), then License
    (an SPDX expression, a name, or the licence's text), then the trove classifiers."""
    if expression and expression.strip() and is_expression(expression.strip()):
        return (LicenseExpression(expression.strip()),)
    text = (declared or "").strip()
    if text and text.upper() != "UNKNOWN":
        if is_expression(text):
            return (LicenseFactory().make_from_string(text),)
        if "\n" not in text and len(text) <= _MAX_LICENSE_NAME:
            return (DisjunctiveLicense(name=text),)
    found: list[LicenseExpression | DisjunctiveLicense] = []
    for c in sorted({str(c).strip() for c in msg.get_all("Classifier") or []}):
        if c.startswith("License ::"):
            spdx = _CLASSIFIER_SPDX.get(c)
            found.append(
                DisjunctiveLicense(id=spdx)
                if spdx
                else DisjunctiveLicense(name=c.split(" :: ")[-1])
            )
    if not found and text and text.upper() != "UNKNOWN":
        # The License field holds the licence's text and no classifier names it: say where
        # the text is rather than copy pages of it into the SBOM.
        return (DisjunctiveLicense(name=f"declared license of {name} (text in METADATA)"),)
    return tuple(found)


def _ref(location: str, name: str, version: str) -> str:
    # A distribution can be in both trees (packaging is in site-packages and runtime/lib):
    # the location keeps bom-refs unique.
    return f"{location}/{canonicalize_name(name)}@{version}"


def _sha256(hexdigest: str) -> HashType:
    return HashType(alg=HashAlgorithm.SHA_256, content=hexdigest)


def _dist_component(dist: Distribution, meta: _Meta) -> Component:
    return Component(
        type=ComponentType.LIBRARY,
        bom_ref=_ref(dist.location, meta.name, meta.version),
        name=meta.name,
        version=meta.version,
        description=meta.summary,
        purl=PackageURL(type="pypi", name=str(canonicalize_name(meta.name)), version=meta.version),
        hashes=[_sha256(dist.wheel_sha256)],
        licenses=meta.licenses,
        properties=[
            Property(name=PROP_LOCATION, value=dist.location),
            Property(name=PROP_WHEEL, value=dist.wheel),
        ],
    )


def _model_component(model: Model) -> Component:
    label = model.name or model.path.rsplit("/", 1)[-1]
    props = [Property(name="airgap:path", value=model.path)]
    if len(model.files) == 1 and model.files[0].path == model.path:
        # A file model: its hash is the component's.
        return Component(
            type=ComponentType.MACHINE_LEARNING_MODEL,
            bom_ref=model.path,
            name=label,
            version=model.version,
            hashes=[_sha256(model.files[0].sha256)],
            properties=props,
        )
    # A folder: one file component (with its hash) per file, nested under the model.
    files = [
        Component(
            type=ComponentType.FILE,
            bom_ref=f.path,
            name=f.path[len(model.path) + 1 :],
            hashes=[_sha256(f.sha256)],
        )
        for f in model.files
    ]
    # The folder's own hash: sha256 of the sorted "<sha256>  <path>" lines (sha256sum's
    # format), so a reviewer can recompute it with standard tools.
    listing = "".join(f"{f.sha256}  {f.path}\n" for f in sorted(model.files, key=lambda f: f.path))
    return Component(
        type=ComponentType.MACHINE_LEARNING_MODEL,
        bom_ref=model.path,
        name=label,
        version=model.version,
        hashes=[_sha256(hashlib.sha256(listing.encode()).hexdigest())],
        properties=props,
        components=files,
    )


def _base_component(base: BaseImage) -> Component:
    # "repo:tag" (a ":" in the last path part; "host:5000/repo" has its port in an earlier one)
    repo, tag = base.ref.split("@", 1)[0], None
    if ":" in repo.rsplit("/", 1)[-1]:
        repo, tag = repo.rsplit(":", 1)
    props = [
        Property(name="airgap:image-ref", value=base.ref),
        Property(name="airgap:included", value="true" if base.included else "false"),
    ]
    hashes = []
    if base.digest is not None:
        props.append(Property(name="airgap:image-id", value=base.digest))
        hashes.append(_sha256(base.digest.removeprefix("sha256:")))
    return Component(
        type=ComponentType.CONTAINER,
        bom_ref=f"base-image:{base.ref}",
        name=repo,
        version=tag,
        hashes=hashes,
        properties=props,
    )


def build_sbom(inputs: SbomInputs) -> bytes:
    """The CycloneDX 1.6 JSON document for one bundle: canonical, reproducible bytes.

    Components: every distribution (``library``, PURL ``pkg:pypi/<name>@<version>``, the
    wheel's sha256, its licence, its location), each model (``machine-learning-model``),
    the scoring runtime (``application``, depending on the ``runtime/lib`` distributions)
    and the base image (``container``) when the bundle names one. The serial number is a
    uuid5 of the document's own sha256 (computed with a zero serial), the timestamp is
    ``created``: the same inputs give the same bytes.

    Raises:
        SiteTreeError: a METADATA file lacks Name or Version.
    """
    bundle = Component(
        type=ComponentType.APPLICATION,
        bom_ref=f"bundle:{inputs.name}@{inputs.version}",
        name=inputs.name,
        version=inputs.version,
    )
    tool = Component(
        type=ComponentType.APPLICATION,
        bom_ref="tool:airgap-bundler",
        name="airgap-bundler",
        version=inputs.tool_version,
        purl=PackageURL(type="pypi", name="airgap-bundler", version=inputs.tool_version),
    )
    runtime = Component(
        type=ComponentType.APPLICATION,
        bom_ref="runtime:airgap_runtime",
        name="airgap_runtime",
        version=inputs.tool_version,
        description="the scoring server (runtime/airgap_runtime) and its libraries (runtime/lib)",
        properties=[Property(name=PROP_LOCATION, value="runtime")],
    )
    bom = Bom(
        serial_number=_PLACEHOLDER_SERIAL,
        metadata=BomMetaData(
            component=bundle,
            timestamp=dt.datetime.fromtimestamp(inputs.created, tz=dt.UTC),
            tools=ToolRepository(components=[tool]),
        ),
    )
    parsed = sorted(
        ((d, _parse_metadata(d.metadata, d.wheel)) for d in inputs.distributions),
        key=lambda p: (p[0].location, canonicalize_name(p[1].name)),
    )
    by_name: dict[tuple[str, str], Component] = {}
    for dist, meta in parsed:
        comp = _dist_component(dist, meta)
        bom.components.add(comp)
        by_name[(dist.location, canonicalize_name(meta.name))] = comp
    models = [_model_component(m) for m in inputs.models]
    for comp in models:
        bom.components.add(comp)
        bom.register_dependency(comp)
    bom.components.add(runtime)
    top: list[Component] = [*models, runtime]
    if inputs.base_image is not None:
        base = _base_component(inputs.base_image)
        bom.components.add(base)
        bom.register_dependency(base)
        top.append(base)
    for dist, meta in parsed:
        comp = by_name[(dist.location, canonicalize_name(meta.name))]
        # Edges only to what the same tree holds: markers are not evaluated (that needs the
        # target interpreter), so a requirement for another platform simply has no node.
        deps = [by_name[k] for r in meta.requires if (k := (dist.location, r)) in by_name]
        bom.register_dependency(comp, deps)
        if dist.location == SITE_DIR and not _required_by_another(meta, parsed):
            top.append(comp)
    runtime_libs = [by_name[k] for k in sorted(by_name) if k[0] == RUNTIME_LIB]
    bom.register_dependency(runtime, runtime_libs)
    bom.register_dependency(bundle, top)
    return _serialise(bom)


def _required_by_another(meta: _Meta, parsed: Sequence[tuple[Distribution, _Meta]]) -> bool:
    want = canonicalize_name(meta.name)
    return any(
        d.location == SITE_DIR and want in m.requires and m.name != meta.name for d, m in parsed
    )


def _serialise(bom: Bom) -> bytes:
    """Canonical JSON (sorted keys, two-space indent, one trailing newline), with the
    serial number derived from the bytes written with the placeholder serial."""

    def render(doc: object) -> bytes:
        return (json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()

    # cyclonedx renders once (it is the slow part); the serial is then set in the document,
    # exactly as cyclonedx writes it ("urn:uuid:<uuid>").
    doc = json.loads(JsonV1Dot6(bom).output_as_string())
    if doc.get("serialNumber") != _PLACEHOLDER_SERIAL.urn:
        raise AssertionError(f"cyclonedx wrote serialNumber {doc.get('serialNumber')!r}")
    digest = hashlib.sha256(render(doc)).hexdigest()
    bom.serial_number = uuid.uuid5(_SERIAL_NAMESPACE, digest)
    doc["serialNumber"] = bom.serial_number.urn
    return render(doc)
