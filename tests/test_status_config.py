"""``lambdalite status`` while lambdalite.toml has a mistake: it still reads Redis and prints the
status of the functions Redis knows, says what is wrong with the file on stderr (one line), exit 1."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.stack import cli, publish

GOOD = """[functions.f]
handler = "handlers.thumbnail.handler"

[functions.g]
handler = "handlers.thumbnail.handler"
"""


@pytest.mark.parametrize(("broken", "said"), [
    ('[functions.f]\nhandler = "handlers.thumbnail.handler"\ntimeout = \n', "not valid TOML"),
    ('[functions.f]\nhandler = "handlers.thumbnail.handler"\ntimeot = 3\n', "timeot"),
])
def test_status_answers_from_redis_and_names_the_mistake(project: Path, redis_url: str, broken: str,
                                                         said: str) -> None:
    (project / "lambdalite.toml").write_text(GOOD)
    for _ in range(3):
        publish(redis_url, project, "f", {})
    publish(redis_url, project, "g", {})
    (project / "lambdalite.toml").write_text(broken)

    done = cli(project, "status", "--json")

    assert done.returncode == 1
    rows = json.loads(done.stdout)["functions"]
    assert rows["f"]["queued"] == 3 and rows["g"]["queued"] == 1
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("lambdalite: ") and said in lines[0], done.stderr
    assert "lambdalite.toml" in lines[0]


def test_status_as_a_table_too(project: Path, redis_url: str) -> None:
    (project / "lambdalite.toml").write_text(GOOD)
    publish(redis_url, project, "f", {})
    (project / "lambdalite.toml").write_text("[functions.f\n")
    done = cli(project, "status")
    assert done.returncode == 1
    assert done.stdout.splitlines()[0].split()[:2] == ["function", "queued"]
    assert done.stdout.splitlines()[1].split()[:2] == ["f", "1"]


def test_other_commands_still_refuse_a_broken_file(project: Path, redis_url: str) -> None:
    (project / "lambdalite.toml").write_text("[functions.f\n")
    done = cli(project, "dlq", "list")
    assert done.returncode == 1 and done.stdout == ""
    assert len(done.stderr.splitlines()) == 1 and "not valid TOML" in done.stderr
