"""The project file, bundle.toml: strict parsing into a Project value (every problem at once)."""

from __future__ import annotations

import datetime as dt
import json
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, cast

from packaging.version import InvalidVersion, Version

from ..errors import ProjectError, escape
from ..formats.smoke import KEYS as SMOKE_KEYS
from ..formats.smoke import MAX_BODY as SMOKE_MAX_BODY
from ..formats.smoke import SmokeSpec
from ..formats.smoke import validate as validate_smoke
from ..formats.source import read_regular
from ..layout import MODEL_DIR, PACKAGE_MODES, PackageMode
from ..target import Target

PROJECT_FILE: Final = "bundle.toml"
DOCS: Final = "see docs/project-file.md"

_TOP_KEYS: Final = frozenset(
    {
        "name",
        "version",
        "entry_script",
        "source_dir",
        "model",
        "lock",
        "mode",
        "base_image",
        "expires",
        "target",
        "env",
        "models",
        "smoke",
    }
)
_TARGET_KEYS: Final = frozenset({"python", "platforms", "implementation", "abi"})
_REQUIRED: Final = ("name", "version")
_MODEL_KEYS: Final = frozenset({"name", "version", "path"})
# Azure ML's model names: letters, digits, '-', '_', '.'; they become folder names here.
_MODEL_NAME_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,254}$")
_MODEL_VERSION_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")

# The name becomes an image name and part of file names, so Docker's rules apply: lowercase.
_NAME_RE: Final = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_ENV_NAME_RE: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# A Docker image reference: repository[:tag][@sha256:digest]; the repository is lowercase
# and may start with a registry host[:port] (never contacted: bases are loaded, not pulled).
_IMAGE_RE: Final = re.compile(
    r"^[a-z0-9][a-z0-9._/-]*(?::[0-9]+/[a-z0-9][a-z0-9._/-]*)?"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@sha256:[0-9a-f]{64})?$"
)
# The scoring runtime owns these: it points them at the unpacked model and packages.
RESERVED_ENV: Final = frozenset({"AZUREML_MODEL_DIR", "PYTHONPATH", "PYTHONHOME"})
MAX_EXPIRY_DAYS: Final = 36_500


@dataclass(frozen=True)
class RegisteredModel:
    """One model file or folder and where it lands under ``model/`` (AZUREML_MODEL_DIR).

    Azure ML's rule: a registered file or folder keeps its own name. With one ``model``,
    AZUREML_MODEL_DIR is the folder holding it (``model = "clf.pkl"`` gives
    ``$AZUREML_MODEL_DIR/clf.pkl``, a folder ``model`` gives ``$AZUREML_MODEL_DIR/model/...``);
    with ``[[models]]`` each one is at ``$AZUREML_MODEL_DIR/<name>/<version>/<file or folder>``.
    """

    path: Path  # the file or folder in the project
    name: str | None = None  # [[models]] only
    version: str | None = None  # [[models]] only

    @property
    def payload_path(self) -> str:
        """Its payload path: ``model/<file or folder>`` or ``model/<name>/<version>/<...>``."""
        if self.name is None:
            return f"{MODEL_DIR}/{self.path.name}"
        return f"{MODEL_DIR}/{self.name}/{self.version}/{self.path.name}"


@dataclass(frozen=True)
class Project:
    """A validated bundle.toml. Paths are absolute and exist; see docs/project-file.md."""

    root: Path  # the project folder (holds bundle.toml)
    name: str
    version: str  # a PEP 440 version (rollback checks compare them)
    entry_script: Path  # a .py file; goes to app/<its file name>
    models: tuple[RegisteredModel, ...]  # `model = ...` (one) or `[[models]]` (one or more)
    lock: Path  # the hashed requirements lock
    target: Target
    mode: PackageMode = "mounted"
    source_dir: Path | None = None  # its files go under app/
    base_image: str | None = None  # a Docker image reference, used by `airgap build`
    env: Mapping[str, str] = field(default_factory=dict)
    expires_days: int | None = None  # `expires = 90`: days after creation
    expires_on: dt.datetime | None = None  # `expires = 2027-01-01`: a fixed UTC instant
    smoke: SmokeSpec | None = None  # [smoke]: the request and expected answer, signed

    @property
    def model(self) -> Path:
        """The first model's file or folder (the only one unless ``[[models]]`` lists more)."""
        return self.models[0].path

    def expires_at(self, created: int) -> int | None:
        """The manifest's ``expires`` (epoch seconds) for a bundle created at ``created``.

        Raises:
            ProjectError: a fixed expiry date is not after the creation time.
        """
        if self.expires_days is not None:
            return created + self.expires_days * 86_400
        if self.expires_on is None:
            return None
        at = int(self.expires_on.timestamp())
        if at <= created:
            raise ProjectError(
                f"expires = {self.expires_on.date().isoformat()} is not after the bundle's "
                f"creation time ({dt.datetime.fromtimestamp(created, dt.UTC):%Y-%m-%d})",
                remedy="set a later date, a number of days, or remove `expires` from bundle.toml",
            )
        return at


def load_project(project_dir: Path) -> Project:
    """Read ``project_dir/bundle.toml`` (or the .toml file given) into a :class:`Project`.

    Strict: unknown keys are refused, and every missing or invalid field is reported in one
    ProjectError, each with what to change.

    Raises:
        ProjectError: the file is missing, is not TOML, or has invalid fields.
    """
    path = project_dir if project_dir.suffix == ".toml" else project_dir / PROJECT_FILE
    try:
        # A FIFO or device named as the project file is refused at once (read_regular).
        raw = read_regular(
            path, lambda reason: ProjectError(f"{escape(str(path))} {reason}"), 16 * 1024 * 1024
        )
        data = tomllib.loads(raw.decode("utf-8"))
    except FileNotFoundError as e:
        raise ProjectError(
            f"{path} does not exist",
            remedy=f"create {PROJECT_FILE} in the project folder ({DOCS})",
        ) from e
    except (OSError, UnicodeDecodeError) as e:
        raise ProjectError(f"cannot read {path}: {e}", remedy="check the path") from e
    except tomllib.TOMLDecodeError as e:
        raise ProjectError(f"{path} is not valid TOML: {e}", remedy="fix the syntax") from e
    return parse_project(data, path.parent.resolve(), source=str(path))


def parse_project(data: Mapping[str, Any], root: Path, *, source: str = PROJECT_FILE) -> Project:
    """Validate parsed TOML ``data`` for a project rooted at ``root`` (see load_project).

    Raises:
        ProjectError: every problem found, in one message.
    """
    p = _Checker(data, root)
    project = p.build()
    if p.problems:
        raise ProjectError(
            f"{source}: {len(p.problems)} problem(s): " + "; ".join(p.problems),
            remedy=f"fix bundle.toml ({DOCS})",
        )
    assert project is not None
    return project


def _is_json_type(headers: tuple[tuple[str, str], ...]) -> bool:
    for name, value in headers:
        if name.lower() == "content-type":
            return value.split(";", 1)[0].strip().lower().endswith("json")
    return False


class _Checker:
    """Collects every problem in bundle.toml instead of stopping at the first."""

    def __init__(self, data: Mapping[str, Any], root: Path) -> None:
        self.data = data
        self.root = root
        self.problems: list[str] = []

    def add(self, problem: str) -> None:
        self.problems.append(problem)

    def build(self) -> Project | None:
        data = self.data
        unknown = sorted(set(data) - _TOP_KEYS)
        if unknown:
            self.add(f"unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(_TOP_KEYS))})")
        for key in _REQUIRED:
            if key not in data:
                self.add(f"{key} is missing")
        name = self.name()
        version = self.version()
        entry = self.path("entry_script", data.get("entry_script", "score.py"), kind="file")
        if entry is not None and entry.suffix != ".py":
            self.add(f"entry_script {entry.name!r} is not a .py file")
        source_dir = None
        if "source_dir" in data:
            source_dir = self.path("source_dir", data["source_dir"], kind="dir")
        models = self.models()
        lock = self.path("lock", data.get("lock", "requirements.lock"), kind="file")
        mode = self.mode()
        base_image = self.base_image()
        env = self.env()
        days, on = self.expires()
        target = self.target()
        smoke = self.smoke()
        for m in models:
            self.layout_rules(entry, source_dir, m.path)
        if self.problems:
            return None
        assert name and version and entry and models and lock and target and mode
        return Project(
            root=self.root,
            name=name,
            version=version,
            entry_script=entry,
            models=models,
            lock=lock,
            target=target,
            mode=mode,
            source_dir=source_dir,
            base_image=base_image,
            env=env,
            expires_days=days,
            expires_on=on,
            smoke=smoke,
        )

    # --- fields ------------------------------------------------------------------------

    def string(self, key: str, value: object) -> str | None:
        if not isinstance(value, str):
            self.add(f"{key} must be a string (quote it), not {type(value).__name__}")
            return None
        return value

    def name(self) -> str | None:
        if "name" not in self.data:
            return None
        value = self.string("name", self.data["name"])
        if value is not None and not _NAME_RE.fullmatch(value):
            self.add(
                f"name {value!r} must be 1-64 lowercase letters, digits, '.', '_' or '-', "
                "starting with a letter or digit (it becomes the image name)"
            )
            return None
        return value

    def version(self) -> str | None:
        if "version" not in self.data:
            return None
        value = self.string("version", self.data["version"])
        if value is None:
            return None
        try:
            Version(value)
        except InvalidVersion:
            self.add(f"version {value!r} is not a PEP 440 version such as '1.0.0'")
            return None
        return value

    def path(self, key: str, value: object, *, kind: str) -> Path | None:
        text = self.string(key, value)
        if text is None:
            return None
        if not text or "\x00" in text:
            self.add(f"{key} is empty")
            return None
        path = (self.root / text).resolve()
        if kind == "file" and not path.is_file():
            self.add(f"{key} {text!r} is not a file in {self.root}")
            return None
        if kind == "dir" and not path.is_dir():
            self.add(f"{key} {text!r} is not a folder in {self.root}")
            return None
        if kind == "any" and not path.exists():
            self.add(f"{key} {text!r} does not exist in {self.root} (train or copy it first)")
            return None
        return path

    def models(self) -> tuple[RegisteredModel, ...]:
        """``model = "..."`` (one file or folder) or ``[[models]]`` tables, never both."""
        data = self.data
        if "model" in data and "models" in data:
            self.add(
                "model and [[models]] are both set; use `model` for one model or [[models]] "
                "(name, version, path) for several"
            )
            return ()
        if "model" in data:
            path = self.path("model", data["model"], kind="any")
            return (RegisteredModel(path),) if path is not None else ()
        raw = data.get("models")
        if raw is None:
            self.add('model is missing: model = "model" (a file or folder), or [[models]] tables')
            return ()
        if not isinstance(raw, list) or not raw or not all(isinstance(t, dict) for t in raw):
            self.add("models must be [[models]] tables with name, version and path")
            return ()
        found: list[RegisteredModel] = []
        seen: set[tuple[str, str]] = set()
        for i, table in enumerate(raw):
            where = f"models[{i}]"
            unknown = sorted(set(table) - _MODEL_KEYS)
            if unknown:
                self.add(
                    f"unknown key(s) {where}.{', '.join(unknown)} (known: name, path, version)"
                )
            missing = [k for k in ("name", "version", "path") if k not in table]
            if missing:
                self.add(f"{where} lacks {', '.join(missing)}")
                continue
            name, version = table["name"], table["version"]
            if isinstance(version, int) and not isinstance(version, bool) and version >= 0:
                version = str(version)  # Azure ML model versions are integers
            if not isinstance(name, str) or not _MODEL_NAME_RE.fullmatch(name):
                self.add(
                    f"{where}.name {name!r} must be letters, digits, '.', '_' or '-' "
                    "(it becomes a folder name under AZUREML_MODEL_DIR)"
                )
                continue
            if not isinstance(version, str) or not _MODEL_VERSION_RE.fullmatch(version):
                self.add(f"{where}.version {version!r} must be a number such as 1, or a short tag")
                continue
            if (name.casefold(), version.casefold()) in seen:
                self.add(f"{where}: model {name} version {version} is listed twice")
                continue
            seen.add((name.casefold(), version.casefold()))
            path = self.path(f"{where}.path", table["path"], kind="any")
            if path is not None:
                found.append(RegisteredModel(path, name, version))
        return tuple(found)

    def mode(self) -> PackageMode | None:
        value = self.string("mode", self.data.get("mode", "mounted"))
        if value is None:
            return None
        if value not in PACKAGE_MODES:
            self.add(f"mode {value!r} must be one of {', '.join(PACKAGE_MODES)}")
            return None
        return cast("PackageMode", value)

    def base_image(self) -> str | None:
        if "base_image" not in self.data:
            return None
        value = self.string("base_image", self.data["base_image"])
        if value is not None and not _IMAGE_RE.fullmatch(value):
            self.add(
                f"base_image {value!r} is not an image reference such as 'name:tag' or "
                "'name@sha256:<digest>' (lowercase, no spaces)"
            )
            return None
        return value

    def env(self) -> dict[str, str]:
        raw = self.data.get("env", {})
        if not isinstance(raw, dict):
            self.add('env must be a table: [env] then NAME = "value" lines')
            return {}
        env: dict[str, str] = {}
        for key, value in sorted(raw.items()):
            if not _ENV_NAME_RE.fullmatch(key):
                self.add(f"env name {key!r} must be letters, digits and '_', not a leading digit")
            elif key in RESERVED_ENV:
                self.add(f"env {key} is set by the scoring runtime and cannot be overridden")
            elif not isinstance(value, str):
                self.add(f"env {key} must be a string (quote it), not {type(value).__name__}")
            elif "\x00" in value:
                self.add(f"env {key} contains a NUL character")
            else:
                env[key] = value
        return env

    def expires(self) -> tuple[int | None, dt.datetime | None]:
        if "expires" not in self.data:
            return None, None
        value = self.data["expires"]
        if isinstance(value, bool):
            pass  # a bool is an int in Python; refused below
        elif isinstance(value, int):
            if 1 <= value <= MAX_EXPIRY_DAYS:
                return value, None
            self.add(f"expires = {value} must be between 1 and {MAX_EXPIRY_DAYS} days")
            return None, None
        elif isinstance(value, dt.datetime):
            # A datetime without an offset is read as UTC, so the result is machine-independent.
            tz = value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)
            return None, tz.astimezone(dt.UTC)
        elif isinstance(value, dt.date):
            return None, dt.datetime(value.year, value.month, value.day, tzinfo=dt.UTC)
        self.add(
            "expires must be a number of days (expires = 90) or a TOML date "
            "(expires = 2027-01-01, unquoted)"
        )
        return None, None

    def smoke(self) -> SmokeSpec | None:
        """``[smoke]``: ``request`` (inline) or ``request_file``, and the expected answer."""
        if "smoke" not in self.data:
            return None
        raw = self.data["smoke"]
        if not isinstance(raw, dict):
            self.add("smoke must be a table: [smoke] then request = '{\"data\": ...}' ...")
            return None
        known = (SMOKE_KEYS - {"body"}) | {"request", "request_file"}
        unknown = sorted(set(raw) - known)
        if unknown:
            self.add(
                f"unknown key(s) smoke.{', smoke.'.join(unknown)} "
                f"(known: {', '.join(sorted(known))})"
            )
        fields = {k: v for k, v in raw.items() if k in known - {"request", "request_file"}}
        body = self.smoke_body(raw)
        if body is not None:
            fields["body"] = body
            headers = fields.get("headers", {})
            if isinstance(headers, dict) and not any(
                isinstance(k, str) and k.lower() == "content-type" for k in headers
            ):
                fields["headers"] = {**headers, "Content-Type": "application/json"}
        fields.setdefault("method", "POST" if "body" in fields else "GET")
        spec, problems = validate_smoke(fields)
        for problem in problems:
            self.add(problem)
        if spec is not None and spec.body is not None and _is_json_type(spec.headers):
            try:
                json.loads(spec.body)
            except ValueError as e:
                self.add(f"smoke: the request is not valid JSON ({e}); fix it or set Content-Type")
                return None
        return spec

    def smoke_body(self, raw: Mapping[str, Any]) -> str | None:
        if "request" in raw and "request_file" in raw:
            self.add("smoke.request and smoke.request_file are both set; use one")
            return None
        if "request_file" in raw:
            path = self.path("smoke.request_file", raw["request_file"], kind="file")
            if path is None:
                return None
            if path.stat().st_size > SMOKE_MAX_BODY:
                self.add(f"smoke.request_file is over {SMOKE_MAX_BODY} bytes; use a smaller sample")
                return None
            try:
                return path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as e:
                self.add(f"smoke.request_file cannot be read as UTF-8 text ({e})")
                return None
        if "request" not in raw:
            return None
        value = raw["request"]
        if isinstance(value, str):
            return value
        if isinstance(value, (dict, list)):
            try:  # a TOML table or array: sent as its JSON text
                return json.dumps(value, allow_nan=False, separators=(",", ":"))
            except (TypeError, ValueError):
                self.add("smoke.request holds a date or NaN, which JSON cannot carry")
                return None
        self.add(
            "smoke.request must be the body as a string ('{\"data\": [[1, 2]]}') or a TOML "
            "table/array sent as JSON"
        )
        return None

    def target(self) -> Target | None:
        raw = self.data.get("target", {})
        if not isinstance(raw, dict):
            self.add('target must be a table: [target] then python = "3.11" ...')
            return None
        unknown = sorted(set(raw) - _TARGET_KEYS)
        if unknown:
            self.add(
                f"unknown key(s) target.{', target.'.join(unknown)} "
                f"(known: {', '.join(sorted(_TARGET_KEYS))})"
            )
        host = Target.host()
        python = raw.get("python", host.python)
        platforms = raw.get("platforms", list(host.platforms))
        implementation = raw.get("implementation", "cp" if "python" in raw else host.implementation)
        abi = raw.get("abi")
        ok = True
        for key, value in (("python", python), ("implementation", implementation)):
            if not isinstance(value, str):
                self.add(f"target.{key} must be a string (quote it), not {type(value).__name__}")
                ok = False
        if abi is not None and not isinstance(abi, str):
            self.add(f"target.abi must be a string, not {type(abi).__name__}")
            ok = False
        if not isinstance(platforms, list) or not all(isinstance(x, str) for x in platforms):
            self.add('target.platforms must be a list of strings, e.g. ["manylinux_2_17_x86_64"]')
            ok = False
        if not ok:
            return None
        if abi is None and "python" not in raw and implementation == host.implementation:
            abi = host.abi
        try:
            return Target.create(python, platforms, implementation=implementation, abi=abi)
        except ValueError as e:
            self.add(f"target: {e}")
            return None

    def layout_rules(self, entry: Path | None, source: Path | None, model: Path | None) -> None:
        """Where the files land in the payload must be unambiguous (see docs/project-file.md)."""
        if entry and source:
            if entry.is_relative_to(source) and entry.parent != source:
                self.add(
                    f"entry_script is inside source_dir but not at its top level; it goes to "
                    f"app/{entry.name}, so move it to {source.name}/{entry.name}"
                )
            elif not entry.is_relative_to(source) and (source / entry.name).exists():
                self.add(
                    f"source_dir already has a {entry.name} at its top level, which would "
                    f"clash with entry_script at app/{entry.name}; rename one of them"
                )
        if model and source and (model.is_relative_to(source) or source.is_relative_to(model)):
            self.add("model and source_dir overlap; keep the model out of the source folder")
        if model and entry and model.is_dir() and entry.is_relative_to(model):
            self.add("entry_script is inside the model folder; keep scoring code out of it")
