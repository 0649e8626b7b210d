"""The ext_proc image's Dockerfile, build context and pinned dependencies (no Docker engine here:
the Dockerfile is checked as text, its install step against the test environment)."""

from __future__ import annotations

import re
import tomllib

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from . import lockfile
from .helpers import CONSTRAINTS, DOCKERIGNORE, REPO, TEMPLATE, parse_dockerfile

IMAGE_UID = "10001"


def test_constraints_pin_the_whole_runtime_closure_as_tested() -> None:
    assert CONSTRAINTS.read_text() == lockfile.render(), (
        "deploy/constraints.txt is stale: .venv/bin/python -m tests.deploy.lockfile > deploy/constraints.txt"
    )


def test_constraints_agree_with_the_pyproject_pins() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    pins = {}
    for line in CONSTRAINTS.read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[canonicalize_name(name)] = version
    for text in pyproject["project"]["dependencies"]:
        requirement = Requirement(text)
        specifiers = list(requirement.specifier)
        assert len(specifiers) == 1 and specifiers[0].operator == "==", f"{text}: pin it with =="
        assert pins[canonicalize_name(requirement.name)] == specifiers[0].version, text


def test_base_images_are_pinned() -> None:
    dockerfile = parse_dockerfile()
    args = dockerfile.build_args()
    for stage in dockerfile.stages:
        image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], stage[0][1].split()[0])
        repository, _, tag = image.partition(":")
        assert repository == "python" and re.fullmatch(r"3\.11\.\d+-slim-\w+", tag), (
            f"FROM {image}: the slim Python 3.11 image, full version pinned"
        )


def test_final_stage_is_non_root_and_has_the_grpc_health_check() -> None:
    dockerfile = parse_dockerfile()
    (user,) = dockerfile.instructions("USER")
    assert user == f"{IMAGE_UID}:{IMAGE_UID}", "a numeric uid:gid, so runAsNonRoot can check it"
    (healthcheck,) = dockerfile.instructions("HEALTHCHECK")
    assert healthcheck.split("CMD", 1)[1].strip() == '["python", "-m", "extproc", "health"]'
    assert dockerfile.exec_form("ENTRYPOINT") == ["python", "-m", "extproc"]
    command = dockerfile.exec_form("CMD")
    assert command[:2] == ["serve", "--write-envoy-config"]


def test_no_secret_is_baked_in() -> None:
    dockerfile = parse_dockerfile()
    for stage in dockerfile.stages:
        for instruction, args in stage:
            if instruction in ("ENV", "ARG", "LABEL"):
                assert not re.search(r"KEY|TOKEN|SECRET|PASSWORD", args.split("=")[0] if instruction == "ARG" else args,
                                     re.I), f"{instruction} {args}"


def test_the_image_renders_from_the_one_template() -> None:
    dockerfile = parse_dockerfile()
    copies = dockerfile.copies()
    env = dockerfile.env()
    assert copies["envoy/envoy.yaml"] == env["AOAI_GATEWAY_ENVOY_TEMPLATE"]
    assert (REPO / "envoy/envoy.yaml").resolve() == TEMPLATE
    # The state and socket dir is where the rendered config goes (the volume shared with Envoy).
    command = dockerfile.exec_form("CMD")
    rendered = command[command.index("--write-envoy-config") + 1]
    assert rendered.rpartition("/")[0] == env["AOAI_GATEWAY_STATE_DIR"] == env["AOAI_GATEWAY_SOCKET_DIR"]
    assert env["PYTHONSAFEPATH"] == "1"
    workdir = dockerfile.instructions("WORKDIR")[-1]
    assert not workdir.startswith(env["AOAI_GATEWAY_STATE_DIR"]), "never import from the shared volume"


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """Docker's .dockerignore globs: `*` and `?` stay within a path segment, `**` crosses them."""
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def _dockerignore_allows(path: str) -> bool:
    """Whether `path` reaches the build context: the last matching line wins (`!` re-includes), and a
    pattern that matches a directory matches everything in it."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    allowed = True
    for line in DOCKERIGNORE.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        regex = _glob_regex(line.lstrip("!").strip("/"))
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            allowed = negate
    return allowed


def test_build_context_holds_what_the_dockerfile_copies_and_no_secrets() -> None:
    dockerfile = parse_dockerfile()
    sources = [src for stage in dockerfile.stages for ins, args in stage if ins == "COPY" and "--from" not in args
               for src in args.split()[:-1] if not src.startswith("--")]
    assert sources
    for source in sources:
        assert (REPO / source).exists(), source
        assert _dockerignore_allows(source), f".dockerignore excludes {source}"
    for private in (".env", ".venv/bin/python", ".git/config", "tests/deploy/helpers.py",
                    "extproc/__pycache__/cli.cpython-311.pyc", "deploy/kubernetes/base/sidecar/config.yaml"):
        assert not _dockerignore_allows(private), f".dockerignore lets {private} into the build context"
