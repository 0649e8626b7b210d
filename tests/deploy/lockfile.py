"""The runtime dependency closure of aoai-gateway in this environment, as deploy/constraints.txt.

    .venv/bin/python -m tests.deploy.lockfile > deploy/constraints.txt
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, distribution

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

PROJECT = "aoai-gateway"
HEADER = """\
# The ext_proc image's and the systemd install's complete runtime dependency set, pinned.
# pyproject.toml pins the direct dependencies; this file also pins what they pull in, so an image
# built next year installs what CI tested. tests/deploy/test_images.py checks it against the
# installed test environment: after changing a dependency, regenerate it with
#   .venv/bin/python -m tests.deploy.lockfile > deploy/constraints.txt
"""


def runtime_closure(project: str = PROJECT) -> dict[str, str]:
    """Canonical name -> installed version of every runtime dependency (no extras of the project)."""
    found: dict[str, str] = {}

    def walk(name: str, extras: frozenset[str]) -> None:
        for text in distribution(name).requires or []:
            requirement = Requirement(text)
            if requirement.marker is not None and not any(
                requirement.marker.evaluate({"extra": extra}) for extra in {"", *extras}
            ):
                continue
            key = canonicalize_name(requirement.name)
            if key in found:
                continue
            try:
                found[key] = distribution(requirement.name).version
            except PackageNotFoundError as exc:
                raise SystemExit(f"{requirement.name} (needed by {name}) is not installed") from exc
            walk(requirement.name, frozenset(requirement.extras))

    walk(project, frozenset())
    return dict(sorted(found.items()))


def render() -> str:
    return HEADER + "".join(f"{name}=={version}\n" for name, version in runtime_closure().items())


if __name__ == "__main__":
    print(render(), end="")
