"""The project's shape: core free of Airflow, provider visible to Airflow, CLI documented,
lint clean."""

from __future__ import annotations

import argparse
import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from coco_ai.cli import build_parser

REPO_ROOT = Path(__file__).resolve().parent.parent
CORE = REPO_ROOT / "coco_ai"
VENV_BIN = Path(sys.executable).parent


def _core_modules() -> list[str]:
    names = []
    for path in sorted(CORE.rglob("*.py")):
        if path.name == "__main__.py":  # importing it would run the program
            continue
        rel = path.relative_to(REPO_ROOT).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts.pop()
        names.append(".".join(parts))
    return names


def _airflow_imports(source: str) -> list[int]:
    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            modules = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules = [node.module]
        else:
            continue
        if any(m.split(".")[0] == "airflow" for m in modules):
            lines.append(node.lineno)
    return lines


def test_core_source_never_imports_airflow():
    offenders = {
        str(p.relative_to(REPO_ROOT)): lines
        for p in CORE.rglob("*.py")
        if (lines := _airflow_imports(p.read_text()))
    }
    assert offenders == {}, f"coco_ai must not import Airflow: {offenders}"


def test_airflow_import_detector_sees_both_forms():
    assert _airflow_imports("import airflow.sdk\nfrom airflow import DAG\nimport os\n") == [1, 2]
    assert _airflow_imports("from . import airflow\nimport airflowish\n") == []


@pytest.mark.timeout(300)
def test_importing_every_core_module_loads_no_airflow():
    # Catches indirect imports too: a dependency of coco_ai that pulls Airflow in.
    modules = _core_modules()
    script = (
        "import importlib, sys\n"
        f"for m in {modules!r}:\n"
        "    importlib.import_module(m)\n"
        "loaded = sorted(m for m in sys.modules if m == 'airflow' or m.startswith('airflow.'))\n"
        "print(len(loaded))\n"
        "sys.exit(1 if loaded else 0)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO_ROOT, timeout=280
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _walk_subparsers(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()):
    """Yield (command path, parser, the help its parent lists for it) for every command."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            listed = {a.dest: a.help for a in action._choices_actions}
            for name, sub in action.choices.items():
                yield (*prefix, name), sub, listed.get(name)
                yield from _walk_subparsers(sub, (*prefix, name))


def test_every_cli_command_has_help(capsys):
    parser = build_parser()
    commands = list(_walk_subparsers(parser))
    assert commands, "coco-ai registers no commands"
    for path, sub, listed_help in commands:
        assert listed_help or sub.description, f"`coco-ai {' '.join(path)}` has no help text"
        with pytest.raises(SystemExit) as exc:
            parser.parse_args([*path, "--help"])
        assert exc.value.code == 0
        assert capsys.readouterr().out.startswith(f"usage: coco-ai {' '.join(path)}")


@pytest.mark.timeout(240)
def test_airflow_lists_the_provider_and_its_trustee_connection_type():
    env = {**os.environ, "PATH": f"{VENV_BIN}:{os.environ['PATH']}"}
    proc = subprocess.run(
        [str(VENV_BIN / "airflow"), "providers", "list", "-o", "json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=200,
    )
    assert proc.returncode == 0, proc.stderr
    providers = {p["package_name"]: p for p in json.loads(proc.stdout)}
    assert "coco-ai-pipelines" in providers

    script = (
        "import json\n"
        "from airflow.providers_manager import ProvidersManager\n"
        "pm = ProvidersManager()\n"
        "hook = pm.hooks['trustee']\n"
        "widgets = [k for k in pm.connection_form_widgets if k.startswith('extra__trustee__')]\n"
        "print(json.dumps({'hook': hook.hook_class_name if hook else None,\n"
        "                  'fields': sorted(widgets),\n"
        "                  'behaviour': pm.field_behaviours.get('trustee')}))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=200
    )
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    assert info["hook"] == "coco_ai_airflow.hooks.trustee.TrusteeHook"
    assert info["fields"], "the trustee connection type declares no form fields"
    assert info["behaviour"], "the trustee connection type declares no ui-field-behaviour"


def test_every_package_folder_is_installed_under_its_import_name():
    import tomllib

    setuptools = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    folder_of = {name: folder for name, folder in setuptools["package-dir"].items()}
    import_name = {folder: name for name, folder in folder_of.items()}
    found = set()
    for folder in ("coco_ai", "operators"):
        for init in (REPO_ROOT / folder).rglob("__init__.py"):
            parts = list(init.parent.relative_to(REPO_ROOT).parts)
            parts[0] = import_name.get(parts[0], parts[0])
            found.add(".".join(parts))
    assert sorted(setuptools["packages"]) == sorted(found)


@pytest.mark.timeout(120)
def test_a_users_own_operators_package_does_not_clash(tmp_path):
    # Airflow puts the dags/ and plugins/ folders on sys.path, and many users keep a package
    # named `operators` there; the provider installs as `coco_ai_airflow`, so both import.
    user = tmp_path / "dags" / "operators"
    user.mkdir(parents=True)
    (user / "__init__.py").write_text("MINE = True\n")
    script = (
        "import operators, coco_ai_airflow.keys as keys\n"
        "assert operators.MINE\n"
        "print(keys.KeyReleaseOperator.__module__)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(tmp_path / "dags")},
        timeout=110,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("coco_ai_airflow.keys")


@pytest.mark.timeout(120)
def test_ruff_is_clean():
    proc = subprocess.run(
        [str(VENV_BIN / "ruff"), "check", "."], capture_output=True, text=True, cwd=REPO_ROOT
    )
    assert proc.returncode == 0, proc.stdout
