"""bundle.toml: defaults, every field, and every problem reported at once."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import pytest

from bundler.errors import ProjectError
from bundler.pack.project import load_project
from bundler.target import Target

REPO = Path(__file__).resolve().parent.parent


def _project(tmp_path: Path, toml: str, *, files: tuple[str, ...] = ()) -> Path:
    """A project folder with bundle.toml, score.py, model/, requirements.lock and ``files``."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "bundle.toml").write_text(toml)
    (tmp_path / "score.py").write_text("def init():\n    pass\n\ndef run(raw):\n    return raw\n")
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "model.bin").write_bytes(b"weights")
    (tmp_path / "requirements.lock").write_text("")
    for name in files:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x = 1\n")
    return tmp_path


MINIMAL = 'name = "demo"\nversion = "1.0.0"\nmodel = "model"\n'


def test_minimal_project_gets_the_documented_defaults(tmp_path: Path) -> None:
    project = load_project(_project(tmp_path, MINIMAL))
    root = tmp_path.resolve()
    assert project.root == root
    assert (project.name, project.version) == ("demo", "1.0.0")
    assert project.entry_script == root / "score.py"
    assert project.model == root / "model"
    assert project.lock == root / "requirements.lock"
    assert project.source_dir is None
    assert project.mode == "mounted"
    assert project.base_image is None
    assert dict(project.env) == {}
    assert project.target == Target.host()
    assert project.expires_at(1_700_000_000) is None


def test_every_field(tmp_path: Path) -> None:
    toml = """
name = "iris.v2_b-1"
version = "2.1.0rc1"
entry_script = "src/serve.py"
source_dir = "src"
model = "weights/model.onnx"
lock = "locks/prod.lock"
mode = "dynamic"
base_image = "registry.local:5000/team/python:3.12@sha256:%s"
expires = 30

[target]
python = "3.12"
platforms = ["manylinux_2_28_aarch64"]

[env]
OMP_NUM_THREADS = "2"
MODEL_NAME = "iris"
""" % ("a" * 64)
    root = _project(
        tmp_path,
        toml,
        files=("src/serve.py", "src/helpers/util.py", "weights/model.onnx", "locks/prod.lock"),
    )
    project = load_project(root / "bundle.toml")  # the file itself is accepted too
    r = root.resolve()
    assert project.name == "iris.v2_b-1"
    assert project.version == "2.1.0rc1"
    assert project.entry_script == r / "src" / "serve.py"
    assert project.source_dir == r / "src"
    assert project.model == r / "weights" / "model.onnx"
    assert project.lock == r / "locks" / "prod.lock"
    assert project.mode == "dynamic"
    assert project.base_image.endswith("@sha256:" + "a" * 64)  # type: ignore[union-attr]
    assert project.target == Target("3.12", "cp", "cp312", ("manylinux_2_28_aarch64",))
    assert dict(project.env) == {"MODEL_NAME": "iris", "OMP_NUM_THREADS": "2"}
    assert project.expires_at(1_000) == 1_000 + 30 * 86_400


def test_expires_as_a_date_is_midnight_utc(tmp_path: Path) -> None:
    project = load_project(_project(tmp_path, MINIMAL + "expires = 2030-01-02\n"))
    midnight = int(dt.datetime(2030, 1, 2, tzinfo=dt.UTC).timestamp())
    assert project.expires_at(1_700_000_000) == midnight
    with pytest.raises(ProjectError, match="is not after the bundle's creation time"):
        project.expires_at(midnight)


def test_expires_as_a_datetime_with_offset(tmp_path: Path) -> None:
    project = load_project(_project(tmp_path, MINIMAL + "expires = 2030-01-02T02:00:00+02:00\n"))
    assert project.expires_at(0) == int(dt.datetime(2030, 1, 2, tzinfo=dt.UTC).timestamp())


def test_every_problem_is_reported_in_one_error(tmp_path: Path) -> None:
    toml = """
name = "Bad Name"
model = "missing-model"
mode = "sideways"
colour = "blue"
expires = "soon"
base_image = "Not An Image"
entry_script = "main.txt"

[target]
python = "3"
os = "linux"

[env]
GOOD = "1"
NUMBER = 3
AZUREML_MODEL_DIR = "/elsewhere"
"1BAD" = "x"
"""
    root = _project(tmp_path, toml, files=("main.txt",))
    with pytest.raises(ProjectError) as info:
        load_project(root)
    message = info.value.message
    expected = [
        "unknown key(s) colour",
        "version is missing",
        "name 'Bad Name' must be",
        "entry_script 'main.txt' is not a .py file",
        "model 'missing-model' does not exist",
        "mode 'sideways' must be one of mounted, dynamic, baked",
        "base_image 'Not An Image' is not an image reference",
        "env NUMBER must be a string",
        "env AZUREML_MODEL_DIR is set by the scoring runtime",
        "env name '1BAD'",
        "expires must be a number of days",
        "unknown key(s) target.os",
        "target: python '3' is not a version",
    ]
    for fragment in expected:
        assert fragment in message, fragment
    assert message.count(";") >= len(expected) - 1
    assert f"{len(expected)} problem(s)" in message
    assert "docs/project-file.md" in (info.value.remedy or "")


def test_missing_required_fields_and_files(tmp_path: Path) -> None:
    (tmp_path / "bundle.toml").write_text('lock = "nope.lock"\n')
    with pytest.raises(ProjectError) as info:
        load_project(tmp_path)
    message = info.value.message
    for fragment in (
        "name is missing",
        "version is missing",
        "model is missing",
        "entry_script 'score.py' is not a file",
        "lock 'nope.lock' is not a file",
    ):
        assert fragment in message


def test_no_bundle_toml(tmp_path: Path) -> None:
    with pytest.raises(ProjectError, match=re.escape("bundle.toml does not exist")) as info:
        load_project(tmp_path)
    assert "create bundle.toml" in (info.value.remedy or "")


def test_invalid_toml(tmp_path: Path) -> None:
    (tmp_path / "bundle.toml").write_text('name = "x\n')
    with pytest.raises(ProjectError, match="is not valid TOML"):
        load_project(tmp_path)


def test_wrong_types(tmp_path: Path) -> None:
    toml = 'name = 1\nversion = 1.0\nmodel = "model"\nenv = 3\ntarget = []\nexpires = 0\n'
    with pytest.raises(ProjectError) as info:
        load_project(_project(tmp_path, toml))
    message = info.value.message
    assert "name must be a string" in message
    assert "version must be a string" in message
    assert "env must be a table" in message
    assert "target must be a table" in message
    assert "expires = 0 must be between 1 and" in message


def test_target_platforms_must_be_strings_of_one_os(tmp_path: Path) -> None:
    bad_type = MINIMAL + '[target]\npython = "3.11"\nplatforms = "manylinux_2_17_x86_64"\n'
    with pytest.raises(ProjectError, match=re.escape("target.platforms must be a list of strings")):
        load_project(_project(tmp_path / "a", bad_type))
    mixed = MINIMAL + '[target]\nplatforms = ["manylinux_2_17_x86_64", "win_amd64"]\n'
    with pytest.raises(ProjectError, match="mix operating systems"):
        load_project(_project(tmp_path / "b", mixed))


def test_target_python_only_keeps_host_platforms(tmp_path: Path) -> None:
    project = load_project(_project(tmp_path, MINIMAL + '[target]\npython = "3.12"\n'))
    assert project.target.python == "3.12"
    assert project.target.abi == "cp312"
    assert project.target.platforms == Target.host().platforms


def test_entry_script_deep_inside_source_dir_is_refused(tmp_path: Path) -> None:
    toml = MINIMAL + 'source_dir = "src"\nentry_script = "src/pkg/score.py"\n'
    root = _project(tmp_path, toml, files=("src/pkg/score.py",))
    with pytest.raises(ProjectError, match="not at its top level"):
        load_project(root)


def test_entry_script_clashing_with_a_source_file_is_refused(tmp_path: Path) -> None:
    root = _project(tmp_path, MINIMAL + 'source_dir = "src"\n', files=("src/score.py",))
    with pytest.raises(
        ProjectError, match=re.escape("would clash with entry_script at app/score.py")
    ):
        load_project(root)


def test_model_inside_the_source_dir_is_refused(tmp_path: Path) -> None:
    toml = 'name = "demo"\nversion = "1"\nmodel = "src/model.bin"\nsource_dir = "src"\n'
    root = _project(tmp_path, toml, files=("src/model.bin",))
    with pytest.raises(ProjectError, match="model and source_dir overlap"):
        load_project(root)


def test_the_iris_example_loads() -> None:
    project = load_project(REPO / "examples" / "iris-sklearn")
    assert project.name == "iris-sklearn"
    assert project.version == "1.0.0"
    assert project.mode == "mounted"
    assert project.base_image == "airgap-test/bookworm-python:latest"
    assert project.target.python == "3.11"
    assert project.target.abi == "cp311"
    assert project.model.is_dir()
    assert (project.model / "model.joblib").is_file()
    assert project.entry_script.name == "score.py"


def test_a_single_model_keeps_its_name_under_the_model_dir(tmp_path: Path) -> None:
    folder = load_project(_project(tmp_path / "a", MINIMAL))
    assert [m.payload_path for m in folder.models] == ["model/model"]
    as_file = load_project(
        _project(
            tmp_path / "b",
            'name = "demo"\nversion = "1"\nmodel = "clf.pkl"\n',
            files=("clf.pkl",),
        )
    )
    assert [m.payload_path for m in as_file.models] == ["model/clf.pkl"]


MULTI = """
name = "demo"
version = "1.0.0"

[[models]]
name = "classifier"
version = 3
path = "model"

[[models]]
name = "tokenizer"
version = "2"
path = "tok.json"
"""


def test_multi_model_tables_land_under_name_and_version(tmp_path: Path) -> None:
    project = load_project(_project(tmp_path, MULTI, files=("tok.json",)))
    root = tmp_path.resolve()
    assert [(m.name, m.version, m.path, m.payload_path) for m in project.models] == [
        ("classifier", "3", root / "model", "model/classifier/3/model"),
        ("tokenizer", "2", root / "tok.json", "model/tokenizer/2/tok.json"),
    ]


def test_multi_model_problems_are_all_reported(tmp_path: Path) -> None:
    toml = """
name = "demo"
version = "1.0.0"
model = "model"

[[models]]
name = "x"
version = 1
path = "model"
"""
    with pytest.raises(ProjectError, match="model and \\[\\[models\\]\\] are both set"):
        load_project(_project(tmp_path / "both", toml))
    toml = """
name = "demo"
version = "1.0.0"

[[models]]
name = "a/b"
version = 1
path = "model"

[[models]]
name = "ok"
version = 1
path = "missing.bin"
colour = "red"

[[models]]
name = "ok2"
path = "model"

[[models]]
name = "dup"
version = 1
path = "model"

[[models]]
name = "DUP"
version = 1
path = "model"
"""
    with pytest.raises(ProjectError) as err:
        load_project(_project(tmp_path / "bad", toml))
    message = str(err.value)
    assert "models[0].name 'a/b'" in message
    assert "models[1].colour" in message
    assert "models[1].path 'missing.bin' does not exist" in message
    assert "models[2] lacks version" in message
    assert "models[4]: model DUP version 1 is listed twice" in message
    assert "5 problem(s)" in message


def test_names_are_matched_whole_not_up_to_a_final_newline(tmp_path: Path) -> None:
    toml = 'name = "demo\\n"\nversion = "1.0.0"\nmodel = "model"\n\n[env]\n"A\\n" = "1"\n'
    with pytest.raises(ProjectError) as err:
        load_project(_project(tmp_path / "a", toml))
    assert "name 'demo\\n'" in str(err.value)
    assert "env name 'A\\n'" in str(err.value)
    toml = 'name = "demo"\nversion = "1"\n\n[[models]]\nname = "clf\\n"\nversion = 1\n'
    with pytest.raises(ProjectError, match=re.escape("models[0].name 'clf\\n'")):
        load_project(_project(tmp_path / "b", toml + 'path = "model"\n'))
