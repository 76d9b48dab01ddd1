"""The exact rq and watchdog (broker.pins): what pyproject.toml pins, checked as each process starts.

A wrong version is made two ways: the version reader replaced (a fault), and, for the processes, a
real distribution of another version found first on the path, as a stray install would be.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from broker import pins
from broker.errors import DependencyError
from tests.stack import ROOT, cli, env


def test_pyproject_pins_exactly_what_is_checked() -> None:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pinned = {m[1]: m[2] for d in deps if (m := re.fullmatch(r"([A-Za-z0-9_.-]+)==([0-9.]+)", d))}
    assert {name: pinned.get(name) for name in pins.PINNED} == pins.PINNED


def test_the_installed_versions_pass() -> None:
    assert pins.mismatches() == []
    pins.check()


def test_another_version_or_none_is_one_clear_line(capsys: pytest.CaptureFixture[str]) -> None:
    versions = {"rq": "3.1.0", "watchdog": None}
    with pytest.raises(DependencyError) as caught:
        pins.check(versions.get)
    message = str(caught.value)
    assert "\n" not in message
    assert "rq 3.1.0, needs 3.0.0" in message and "watchdog not installed, needs 7.1.1" in message
    pins.warn(versions.get)
    assert capsys.readouterr().err == f"lambdalite: warning: {message}\n"
    pins.warn({"rq": "3.0.0", "watchdog": "7.1.1"}.get)
    assert capsys.readouterr().err == ""


@pytest.fixture
def stray_rq(tmp_path: Path) -> dict[str, str]:
    """An environment where another rq's metadata is found first, as a stray install's would be."""
    site = tmp_path / "stray"
    info = site / "rq-3.1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: rq\nVersion: 3.1.0\n")
    return env(PYTHONPATH=f"{site}:{ROOT}")


@pytest.mark.parametrize("module", ["workers.scaler", "sources.files", "sources.sqlite", "sources.http"])
def test_a_process_refuses_to_start_on_another_version(project: Path, redis_url: str, stray_rq: dict[str, str],
                                                       module: str) -> None:
    (project / "lambdalite.toml").write_text('[functions.f]\nhandler = "h.f"\n')
    done = subprocess.run([sys.executable, "-m", module], cwd=project, env=stray_rq, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "lambdalite: installed rq 3.1.0, needs 3.0.0 (lambdalite uses its internals): "
        "`pip install -r requirements.lock` installs the pinned ones"], done.stderr


def test_the_cli_warns_and_carries_on(project: Path, stray_rq: dict[str, str]) -> None:
    (project / "lambdalite.toml").write_text('[functions.f]\nhandler = "h.f"\n')
    (project / "h.py").write_text("def f(event, context):\n    return event\n")
    done = subprocess.run([sys.executable, "-m", "broker.cli", "check"], cwd=project, env=stray_rq,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stderr.startswith("lambdalite: warning: installed rq 3.1.0, needs 3.0.0"), done.stderr
    assert cli(project, "check").stderr == "", "no warning with the pinned versions"
