"""The conda envs of `snakemake --sdm conda` (envs/*.yaml): each parses, pins every package to one
version within pyproject.toml's ranges for what it installs, the rules use each, and no two are
the same env under different names."""

from __future__ import annotations

import re
import tomllib

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

from conftest import REPO

ENVS = sorted((REPO / "envs").glob("*.yaml"))
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
CONDA_PIN = re.compile(r"^([A-Za-z0-9_.-]+)\s*==?\s*([0-9][0-9A-Za-z.]*)$")
CONDA_NAMES = {"pytorch": "torch"}  # conda-forge name -> PyPI name
SELF = re.compile(r"^-e \$\{MERGEFLOW_SRC\}(?:\[([a-z_,]+)\])?$")


def read_env(path):
    """(conda pins {name: version}, pip pins {name: Requirement}, extras the env installs)."""
    env = yaml.safe_load(path.read_text())
    assert env["channels"][0] == "conda-forge", path.name
    conda, pip, extras = {}, {}, None
    for dep in env["dependencies"]:
        if dep == "pip":
            continue
        if isinstance(dep, dict):
            for line in dep["pip"]:
                match = SELF.match(line)
                if match:
                    extras = (match.group(1) or "").split(",") if match.group(1) else []
                    continue
                requirement = Requirement(line)
                specs = list(requirement.specifier)
                assert len(specs) == 1 and specs[0].operator == "==", f"{path.name}: {line} is not pinned"
                pip[canonicalize_name(requirement.name)] = requirement
            continue
        match = CONDA_PIN.match(dep)
        assert match, f"{path.name}: {dep} is not pinned to one version"
        name, version = match.groups()
        conda[canonicalize_name(CONDA_NAMES.get(name, name))] = version
    assert extras is not None, f"{path.name}: does not install this checkout (-e ${{MERGEFLOW_SRC}})"
    return conda, pip, extras


def pinned_version(conda, pip, name) -> Version:
    if name in pip:
        return Version(next(iter(pip[name].specifier)).version)
    return Version(conda[name])


def required(extras: list[str]) -> list[Requirement]:
    """What pip installs for mergeflow[extras], self-references expanded."""
    requirements, todo = [Requirement(r) for r in PYPROJECT["dependencies"]], list(extras)
    while todo:
        for line in PYPROJECT["optional-dependencies"][todo.pop()]:
            requirement = Requirement(line)
            if canonicalize_name(requirement.name) == "mergeflow":
                todo.extend(requirement.extras)
            else:
                requirements.append(requirement)
    return requirements


@pytest.mark.parametrize("path", ENVS, ids=lambda p: p.name)
def test_env_pins_what_it_installs_within_pyprojects_ranges(path):
    conda, pip, extras = read_env(path)
    assert Version(conda["python"]) in SpecifierSet(PYPROJECT["requires-python"])
    for requirement in required(extras):
        name = canonicalize_name(requirement.name)
        assert name in pip or name in conda, f"{path.name}: {requirement} is not pinned"
        version = pinned_version(conda, pip, name)
        assert requirement.specifier.contains(version, prereleases=True), f"{path.name}: {name} {version} !~ {requirement}"
        if name in pip:
            assert set(requirement.extras) <= set(pip[name].extras), f"{path.name}: {name} lacks extras {requirement.extras}"


def test_shared_packages_have_one_version_across_envs():
    versions = {}
    for path in ENVS:
        conda, pip, _ = read_env(path)
        for name in {**conda, **pip}:
            versions.setdefault(name, set()).add(pinned_version(conda, pip, name))
    assert {name: v for name, v in versions.items() if len(v) > 1} == {}


def test_each_env_is_used_and_differs_from_the_others():
    used = set()
    for smk in (REPO / "workflow" / "rules").glob("*.smk"):
        used |= set(re.findall(r'"\.\./\.\./envs/([\w.-]+\.yaml)"', smk.read_text()))
    assert used == {path.name for path in ENVS}
    contents = [yaml.safe_load(path.read_text())["dependencies"] for path in ENVS]
    assert len({yaml.safe_dump(c) for c in contents}) == len(ENVS)
