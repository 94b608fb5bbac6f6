"""The generated Dockerfiles and image names (pure: no engine, no files)."""

from __future__ import annotations

import json
import re

import pytest

from bundler.deploy.dockerfile import (
    DockerfileSpec,
    default_tag,
    dockerfile_base,
    render_dockerfile,
    render_dockerfiles,
    variant_tag,
)
from bundler.errors import ProjectError

IMAGE_ID = "sha256:" + "1a" * 32


def spec(**changes: object) -> DockerfileSpec:
    values: dict[str, object] = {
        "name": "iris-sklearn",
        "version": "1.0.0",
        "created": 1_700_000_000,
        "entry_script": "app/score.py",
        "base_ref": "airgap-test/bookworm-python:latest",
        "base_digest": IMAGE_ID,
        "env": {"OMP_NUM_THREADS": "1"},
    }
    values.update(changes)
    return DockerfileSpec(**values)  # type: ignore[arg-type]


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", text)
    out = []
    for line in joined.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            word, _, rest = line.strip().partition(" ")
            out.append((word, rest))
    return out


def env_of(text: str) -> dict[str, str]:
    (args,) = [a for i, a in instructions(text) if i == "ENV"]
    pairs = re.findall(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"', args)
    return {k: re.sub(r"\\(.)", r"\1", v) for k, v in pairs}


def test_base_is_pinned_by_image_id_and_nothing_runs() -> None:
    text = render_dockerfile(spec())
    ins = instructions(text)
    assert ins[0] == ("FROM", IMAGE_ID)
    assert dockerfile_base(text) == IMAGE_ID
    assert "RUN" not in {i for i, _ in ins}
    assert ("USER", "10001:10001") in ins
    assert ("EXPOSE", "5001") in ins
    assert ("ENTRYPOINT", '["python3", "-m", "airgap_runtime"]') in ins


def test_layers_go_runtime_then_model_then_app_code() -> None:
    copies = [a for i, a in instructions(render_dockerfile(spec())) if i == "COPY"]
    assert copies == [
        "runtime/ /opt/airgap/runtime/",
        "model/ /opt/airgap/model/",
        "app/ /opt/airgap/app/",
    ]
    ins = instructions(render_dockerfile(spec()))
    last_copy = max(n for n, (i, _) in enumerate(ins) if i == "COPY")
    # Metadata that differs per bundle comes after every file layer.
    assert all(i not in {"ENV", "LABEL", "ARG"} for i, _ in ins[:last_copy])


def test_baked_variant_copies_site_packages_after_the_runtime() -> None:
    copies = [a for i, a in instructions(render_dockerfile(spec(), baked=True)) if i == "COPY"]
    assert copies == [
        "runtime/ /opt/airgap/runtime/",
        "site-packages/ /opt/airgap/site-packages/",
        "model/ /opt/airgap/model/",
        "app/ /opt/airgap/app/",
    ]


def test_environment_points_at_the_mount_point_and_the_runtime() -> None:
    env = env_of(render_dockerfile(spec()))
    assert env["AZUREML_ENTRY_SCRIPT"] == "/opt/airgap/app/score.py"
    assert env["AZUREML_MODEL_DIR"] == "/opt/airgap/model"
    assert env["AZUREML_EXTRA_PYTHON_LIB_PATH"] == "/opt/airgap/site-packages"
    assert env["PYTHONPATH"] == "/opt/airgap/runtime:/opt/airgap/runtime/lib"
    assert env["OMP_NUM_THREADS"] == "1"


def test_manifest_env_cannot_move_the_mount_point() -> None:
    env = env_of(render_dockerfile(spec(env={"AZUREML_EXTRA_PYTHON_LIB_PATH": "/evil"})))
    assert env["AZUREML_EXTRA_PYTHON_LIB_PATH"] == "/opt/airgap/site-packages"


def test_env_values_are_quoted_and_never_expanded() -> None:
    text = render_dockerfile(spec(env={"GREETING": 'say "hi" to $USER \\o/'}))
    assert 'GREETING="say \\"hi\\" to \\$USER \\\\o/"' in text
    assert env_of(text)["GREETING"] == 'say "hi" to $USER \\o/'


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"A": "two\nlines"}, "newline"),
        ({"1BAD": "x"}, "not valid"),
        ({"BAD NAME": "x"}, "not valid"),
        # `$` would match before a final newline: a name must be matched whole, or it
        # would inject Dockerfile instructions.
        ({"A\nRUN rm -rf /\n#": "x"}, "not valid"),
        ({"A\n": "x"}, "not valid"),
    ],
)
def test_env_that_cannot_be_written_safely_is_refused(env: dict[str, str], message: str) -> None:
    with pytest.raises(ProjectError, match=message):
        render_dockerfile(spec(env=env))


def test_healthcheck_asks_get_slash_with_python_not_curl() -> None:
    (args,) = [a for i, a in instructions(render_dockerfile(spec())) if i == "HEALTHCHECK"]
    options, _, cmd = args.partition(" CMD ")
    assert "--start-period=" in options
    argv = json.loads(cmd)
    assert argv[:2] == ["python3", "-c"]
    assert "http://127.0.0.1:5001/" in argv[2]
    compile(argv[2], "<healthcheck>", "exec")  # the probe is valid Python


def test_labels_carry_title_version_created_and_the_revision_argument() -> None:
    text = render_dockerfile(spec())
    ins = instructions(text)
    assert ("ARG", "AIRGAP_PAYLOAD_SHA256=unknown") in ins
    (labels,) = [a for i, a in ins if i == "LABEL"]
    assert 'org.opencontainers.image.title="iris-sklearn"' in labels
    assert 'org.opencontainers.image.version="1.0.0"' in labels
    assert 'org.opencontainers.image.created="2023-11-14T22:13:20Z"' in labels
    assert 'org.opencontainers.image.revision="${AIRGAP_PAYLOAD_SHA256}"' in labels
    assert f'org.opencontainers.image.base.digest="{IMAGE_ID}"' in labels
    assert 'airgap-bundler.variant="normal"' in labels
    baked = render_dockerfile(spec(), baked=True)
    assert 'airgap-bundler.variant="baked"' in baked


def test_unpinned_base_names_the_reference_and_says_build_refuses() -> None:
    text = render_dockerfile(spec(base_digest=None))
    assert dockerfile_base(text) == "airgap-test/bookworm-python:latest"
    assert "NOT pinned" in text and "org.opencontainers.image.base.digest" not in text


def test_a_malformed_digest_is_refused() -> None:
    with pytest.raises(ProjectError, match="not 'sha256:'"):
        render_dockerfile(spec(base_digest="sha256:xyz"))


def test_rendering_is_deterministic_and_both_files_are_given() -> None:
    files = render_dockerfiles(spec())
    assert set(files) == {"docker/Dockerfile", "docker/Dockerfile.baked"}
    assert files == render_dockerfiles(spec())
    assert files["docker/Dockerfile"].decode() == render_dockerfile(spec())
    assert files["docker/Dockerfile.baked"].decode() == render_dockerfile(spec(), baked=True)


@pytest.mark.parametrize(
    ("name", "version", "baked", "tag"),
    [
        ("iris-sklearn", "1.0.0", False, "iris-sklearn:1.0.0"),
        ("iris-sklearn", "1.0.0", True, "iris-sklearn:1.0.0-baked"),
        ("My Model", "2.0+cpu", False, "my-model:2.0-cpu"),
        ("__", ".1", False, "airgap-model:1"),
    ],
)
def test_default_tag_is_valid_for_docker(name: str, version: str, baked: bool, tag: str) -> None:
    assert default_tag(name, version, "baked" if baked else "normal") == tag


def test_variant_tag_appends_baked_to_the_tag_part() -> None:
    assert variant_tag("iris:prod", "normal") == "iris:prod"
    assert variant_tag("iris:prod", "baked") == "iris:prod-baked"
    assert variant_tag("host:5000/iris", "baked") == "host:5000/iris:latest-baked"
    assert variant_tag("iris", "baked") == "iris:latest-baked"
