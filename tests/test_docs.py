"""Documentation that cannot drift: every hook documented, README commands consistent with CI."""

from pathlib import Path

from forge_core import hookspecs

ROOT = Path(__file__).resolve().parent.parent


def test_every_hookspec_has_a_docs_section():
    text = (ROOT / "docs" / "plugin-hooks.md").read_text()
    hooks = [name for name in dir(hookspecs) if name.startswith("forge_register_")]
    assert len(hooks) == 4
    for name in hooks:
        assert f"## {name}(" in text, f"docs/plugin-hooks.md has no section for {name}"


def test_ci_runs_the_readme_commands():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    for command in ("pip install -r requirements-dev.txt", "python -m pytest"):
        assert command in readme.split("---")[0], command  # on the first screen
        assert command in ci, command


def test_every_plugin_directory_is_installed_by_the_dev_requirements():
    wanted = {line.split()[1].split("[")[0] for line in (ROOT / "requirements-dev.txt").read_text().splitlines()
              if line.startswith("-e ") and line.split()[1] != ".[test]"}
    found = {str(p.parent.relative_to(ROOT)) for p in ROOT.glob("plugins/*/pyproject.toml")}
    assert found <= wanted, found - wanted
