"""The running revision in Redis (broker.revision) and the authority that accepts edits
(workers.reload): numbering, following, each function's code, refusals, and the CLI answering for
the running revision rather than the file."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import pytest

from broker import revision
from broker.queues import function_queue
from broker.registry import Registry, load_registry
from broker.settings import load_settings
from broker.stats import alive_key
from tests.stack import cli, close_redis_clients, redis_client  # noqa: F401 (an autouse fixture)
from tests.waiting import wait_until
from workers import reload
from workers.reload import Reloader

ONE = '[functions.a]\nhandler = "pkg.a.handler"\n'
TWO = ONE + '\n[functions.b]\nhandler = "pkg.b.handler"\n'
MODULE = "def handler(event, context):\n    return {!r}\n"


def project_with_package(project: Path, toml: str = TWO) -> Path:
    (project / "pkg").mkdir()
    (project / "pkg" / "__init__.py").write_text("")
    (project / "pkg" / "a.py").write_text(MODULE.format("a"))
    (project / "pkg" / "b.py").write_text(MODULE.format("b"))
    (project / "pkg" / "shared.py").write_text("X = 1\n")
    (project / "lambdalite.toml").write_text(toml)
    return project / "lambdalite.toml"


def test_numbers_count_changes_only(project: Path, redis_url: str) -> None:
    client = redis_client(redis_url)
    assert revision.read(client) is None
    first = revision.publish(client, b"x = 1", {"a": "1"})
    again = revision.publish(client, b"x = 1", {"a": "1"})
    code = revision.publish(client, b"x = 1", {"a": "2"})
    text = revision.publish(client, b"x = 2", {"a": "2"})
    assert (first.number, again.number, code.number, text.number) == (1, 1, 2, 3)
    found = revision.read(client)
    assert found is not None and found[0] == text and found[1] == b"x = 2"
    assert found[0].sha256 == revision.digest(b"x = 2")


def test_a_damaged_key_is_moved_aside_and_written_afresh(project: Path, redis_url: str) -> None:
    client = redis_client(redis_url)
    client.set(revision.KEY, "not a hash")
    assert revision.read(client) is None
    assert revision.publish(client, b"", {}).number == 1
    assert client.keys("lambdalite:quarantine:*")


def test_each_function_has_its_own_code(project: Path) -> None:
    path = project_with_package(project)
    registry = load_registry(path)
    files = revision.code_files(registry)
    pkg = project / "pkg"
    assert sorted(files["a"]) == [pkg / "__init__.py", pkg / "a.py", pkg / "shared.py"]
    assert sorted(files["b"]) == [pkg / "__init__.py", pkg / "b.py", pkg / "shared.py"]
    before = revision.code_digests(registry)
    (pkg / "b.py").write_text(MODULE.format("b, edited"))
    after_b = revision.code_digests(registry)
    assert revision.changed(registry, registry, before, after_b) == {"b"}  # b's own module: b only
    (pkg / "shared.py").write_text("X = 2\n")
    assert revision.changed(registry, registry, after_b, revision.code_digests(registry)) == {"a", "b"}
    (pkg / "__pycache__").mkdir()
    (pkg / "__pycache__" / "a.cpython-311.pyc").write_bytes(b"cache")
    assert "pkg/__pycache__/a.cpython-311.pyc" not in revision.code_digests(registry)  # caches are not code
    assert revision.watched(registry) == [(project.resolve(), False), (pkg.resolve(), True)]


def test_a_command_s_code_is_the_files_it_names(project: Path) -> None:
    (project / "run.sh").write_text("echo 1\n")
    (project / "lambdalite.toml").write_text('[functions.c]\ncommand = ["sh", "run.sh"]\n')
    registry = load_registry(project / "lambdalite.toml")
    assert revision.code_files(registry) == {"c": [project / "run.sh"]}
    assert list(revision.code_digests(registry)) == ["run.sh"]


def test_a_follower_applies_each_newer_revision(project: Path, redis_url: str) -> None:
    client = redis_client(redis_url)
    path = project_with_package(project, ONE)
    revision.publish(client, ONE.encode(), {})
    seen: list[int] = []
    registry = load_registry(path)
    applied = threading.Event()

    def apply(new: Registry) -> None:
        registry.replace(new)
        seen.append(new.revision.number)
        applied.set()

    follower = revision.Follower(client, path, apply)
    follower.start()
    try:
        assert follower.ready.wait(10) and seen == [1]
        applied.clear()
        revision.publish(client, TWO.encode(), {})
        assert applied.wait(10)
        assert seen == [1, 2] and set(registry.functions) == {"a", "b"} and registry.revision.number == 2
    finally:
        follower.stop()


class Recorder:
    """Takes each accepted registry as the scaler does, and keeps what it was told."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.calls: list[tuple[Registry, set[str]]] = []

    def __call__(self, registry: Registry, changed: set[str]) -> None:
        self.calls.append((registry, changed))
        self.registry.replace(registry)


def reloader_for(project: Path, redis_url: str, toml: str = TWO) -> tuple[Reloader, Registry, Recorder]:
    path = project_with_package(project, toml)
    registry = load_registry(path)
    recorder = Recorder(registry)
    reloader = Reloader(load_settings(), redis_client(redis_url), registry, recorder)
    reloader.publish_running()
    return reloader, registry, recorder


def look(reloader: Reloader) -> bool:
    reloader.notice()
    time.sleep(0.6)
    return reloader.step()


def test_the_authority_accepts_an_edit_and_names_what_changed(project: Path, redis_url: str,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAMBDALITE_SANDBOX_USER", "root")
    reloader, registry, recorder = reloader_for(project, redis_url, ONE)
    (project / "lambdalite.toml").write_text(TWO)
    assert look(reloader)
    new, changed = recorder.calls[-1]
    assert changed == {"b"} and new.revision.number == 2
    (project / "pkg" / "a.py").write_text(MODULE.format("a, edited"))
    assert look(reloader)
    assert recorder.calls[-1][1] == {"a"} and recorder.calls[-1][0].revision.number == 3
    assert not look(reloader), "nothing changed: no revision"


def test_the_watch_wakes_for_edits_and_not_for_a_log_written_beside_them(
    project: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LAMBDALITE_SANDBOX_USER", "root")
    seen: list[str] = []
    noticed = reload._Noticed.on_any_event
    monkeypatch.setattr(reload._Noticed, "on_any_event",
                        lambda self, event: (seen.append(event.event_type), noticed(self, event)))
    reloader, _registry, _recorder = reloader_for(project, redis_url)
    woken = threading.Event()
    reloader.wake = woken.set
    reloader.watch()
    try:
        time.sleep(0.2)  # the watch in place
        with (project / "stack.log").open("a") as out:  # a stack's output kept beside its config
            for i in range(200):
                out.write(f"line {i}\n")
                out.flush()
            time.sleep(0.5)
            assert seen == [] and not woken.is_set(), "every write to the log reached the watch"
        wait_until(lambda: seen == ["closed"], what="the log's close, the one event it raises")
        assert not woken.is_set() and reloader.wait is None, "a log is not an edit"

        (project / "pkg" / "b.py").write_text(MODULE.format("b, edited"))  # written in place
        assert woken.wait(5), "an edit in place was not noticed"
        woken.clear()
        assert look(reloader)
        scratch = project / "lambdalite.toml.new"  # an editor's save by rename
        scratch.write_text(TWO + "# saved by rename\n")
        scratch.rename(project / "lambdalite.toml")
        assert woken.wait(5), "a save by rename was not noticed"
    finally:
        reloader.unwatch()


@pytest.mark.parametrize(("edit", "said"), [
    (lambda p: (p / "lambdalite.toml").write_text(TWO + "timeot = 3\n"), ["lambdalite.toml", "'b'", "timeot"]),
    (lambda p: (p / "pkg" / "b.py").write_text("def handler(:\n"), ["lambdalite.toml", "'b'", "handler"]),
    (lambda p: (p / "lambdalite.toml").write_text("[functions.a\n"), ["lambdalite.toml", "not valid TOML"]),
    # What a save caught between its truncation and its write looks like: not "no functions".
    (lambda p: (p / "lambdalite.toml").write_text(""), ["lambdalite.toml", "empty", "keep a comment"]),
])
def test_an_invalid_edit_is_refused_in_one_line(project: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch,
                                                caplog: pytest.LogCaptureFixture, edit, said) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("LAMBDALITE_SANDBOX_USER", "root")
    reloader, registry, recorder = reloader_for(project, redis_url)
    client = redis_client(redis_url)
    edit(project)
    with caplog.at_level(logging.INFO, logger="lambdalite.reload"):
        assert not look(reloader)
    refusals = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(refusals) == 1 and refusals[0].getMessage().startswith("reload refused: ")
    assert all(word in refusals[0].getMessage() for word in said), refusals[0].getMessage()
    assert recorder.calls == [] and revision.read(client)[0].number == 1
    assert set(registry.functions) == {"a", "b"}
    assert all(word in revision.refused(client) for word in said)


def test_the_cli_answers_for_the_running_revision(project: Path, redis_url: str) -> None:
    client = redis_client(redis_url)
    project_with_package(project, ONE)
    revision.publish(client, ONE.encode(), {})
    (project / "lambdalite.toml").write_text(TWO)  # b is in the file, not in the running revision
    assert cli(project, "invoke", "b", "--async").returncode == 0, "no scaler runs: the file is what will run"
    client.delete(function_queue(client, "b").key)
    client.set(alive_key("test-scaler"), 1, ex=60)  # a scaler runs revision 1
    refused = cli(project, "invoke", "b", "--async")
    assert refused.returncode == 1 and "no function named 'b'" in refused.stderr
    assert client.llen(function_queue(client, "b").key) == 0
    accepted = cli(project, "invoke", "a", "--async")
    assert accepted.returncode == 0, accepted.stderr
    (project / "lambdalite.toml").write_text("[functions.a\n")  # a mistake in the file: status still answers
    done = cli(project, "status", "--json")
    assert done.returncode == 0, done.stderr
    assert '"number": 1' in done.stdout and '"a"' in done.stdout
