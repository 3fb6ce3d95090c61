from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from coco_ai.guest import cli
from coco_ai.guest.initdata import Initdata


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="coco-ai")
    cli.register(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def test_initdata_command_writes_toml_and_prints_digest(
    tmp_path: Path, ca_pem: bytes, capsys: pytest.CaptureFixture[str]
) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_bytes(ca_pem)
    out = tmp_path / "initdata.toml"
    args = _parse(
        ["guest", "initdata", "--kbs-url", "https://127.0.0.1:8080", "--kbs-ca", str(ca),
         "--claim", "io.coco-ai.run-id=r-42", "--out", str(out)]
    )  # fmt: skip
    assert args.func(args) == 0
    printed = json.loads(capsys.readouterr().out)
    init = Initdata.parse(out.read_bytes())
    assert printed["digest"] == init.digest().hex()
    assert Initdata.from_annotation(printed["annotation"]).toml == init.toml
    assert init.claim("io.coco-ai.run-id") == "r-42" and init.kbs_cert == ca_pem.decode()


def test_initdata_command_rejects_bad_claims(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "x.toml"
    for claim in ("no-equals", "run-id=1"):
        args = _parse(["guest", "initdata", "--kbs-url", "http://127.0.0.1:1", "--claim", claim,
                       "--out", str(out)])  # fmt: skip
        assert args.func(args) == 2
    assert not out.exists()
    assert "io.coco-ai." in capsys.readouterr().err


def test_serve_refuses_bad_initdata_and_non_loopback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('version = "9"\n')
    args = _parse(["guest", "serve", "--initdata", str(bad), "--port", "0"])
    assert args.func(args) == 2
    assert "version" in capsys.readouterr().err

    good = tmp_path / "good.toml"
    args = _parse(["guest", "initdata", "--kbs-url", "http://127.0.0.1:1", "--out", str(good)])
    assert args.func(args) == 0
    args = _parse(["guest", "serve", "--initdata", str(good), "--host", "0.0.0.0", "--port", "0"])
    assert args.func(args) == 2
    assert "loopback" in capsys.readouterr().err
