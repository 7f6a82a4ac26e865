"""The two install paths (pip via pyproject.toml, conda via environment.yml) list the same packages."""

import tomllib

import yaml


def test_environment_yml_matches_pyproject(root):
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]["dependencies"]
    env = yaml.safe_load((root / "environment.yml").read_text())
    pip_lists = [d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert len(pip_lists) == 1, "environment.yml needs exactly one pip: section"
    assert sorted(pip_lists[0]) == sorted(project)


def test_ci_calls_make_test(root):
    script = (root / ".ci" / "run").read_text()
    assert "make test" in script
