"""The Lua scripts of broker/lua/ and their loader: headers, loading on a real Redis, NOSCRIPT survived."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import redis
from redis.exceptions import NoScriptError

from broker import connection, scripts
from broker.errors import ScriptError

TEST_SCRIPTS = Path(__file__).with_name("lua")  # the tests' own
SCRIPTS = sorted(p.stem for p in scripts.FOLDER.glob("*.lua"))
EVERY = [(scripts.FOLDER, name) for name in SCRIPTS] + [(TEST_SCRIPTS, p.stem)
                                                        for p in sorted(TEST_SCRIPTS.glob("*.lua"))]
LIBRARY = sorted(scripts.LIBRARY.glob("*.lua"))
_USED = re.compile(r"\b(KEYS|ARGV)\[(\d+)\]")


def _code(text: str) -> str:
    return "\n".join(line.split("--", 1)[0] for line in text.splitlines())


def test_there_are_scripts_and_no_lua_in_python() -> None:
    assert len(SCRIPTS) >= 10
    root = Path(__file__).resolve().parent.parent
    calls = re.compile(r"\bredis\.p?" + "call" + r"\(")  # spelt apart, so that this file is not one of them
    offenders = [str(p.relative_to(root)) for folder in ("broker", "workers", "sources", "handlers", "tests", "bench")
                 for p in (root / folder).rglob("*.py") if calls.search(p.read_text())]
    assert offenders == []


@pytest.mark.parametrize("folder, name", EVERY)
def test_each_header_names_what_the_script_uses(folder: Path, name: str) -> None:
    script = scripts.load(name, folder)
    header = script.header
    assert header.title == name and header.returns
    assert all(slot.meaning for slot in header.keys + header.args)
    # Every literal position the code reads is declared (or falls in a declared rest).
    declared = {"KEYS": header.keys, "ARGV": header.args}
    for kind, position in _USED.findall(_code(script.text)):
        slots = declared[kind]
        assert slots, f"{name} reads {kind}[{position}] but declares no {kind}"
        assert int(position) <= len(slots) or slots[-1].rest, f"{name} reads {kind}[{position}], not in its header"


@pytest.mark.parametrize("path", LIBRARY, ids=lambda p: p.stem)
def test_each_library_file_says_what_it_defines(path: Path) -> None:
    lines = path.read_text().splitlines()
    assert lines[0].startswith(f"-- {path.stem}: ")
    assert any(line.startswith("-- Returns: ") for line in lines)
    assert not _USED.search(_code(path.read_text())), "library functions are given what they use"


@pytest.mark.parametrize("folder, name", EVERY)
def test_each_script_loads_on_redis(r: redis.Redis, folder: Path, name: str) -> None:
    script = scripts.load(name, folder)
    assert r.script_load(script.text) == script.sha
    assert r.script_exists(script.sha) == [True]


def test_a_flushed_script_is_loaded_again(r: redis.Redis) -> None:
    script = scripts.load("quarantine_incr")
    keys = {"hash": "h", "hash_aside": "lambdalite:quarantine:h:1"}
    args = {"quarantine_keep": 60, "quarantine_mark": "m", "field": "f", "increment": 2}
    assert script(r, keys=keys, args=args) == []
    r.script_flush()
    assert script(r, keys=keys, args=args) == []
    assert r.hget("h", "f") == b"4"
    # The packed command: NOSCRIPT after a flush, then it runs once loaded.
    r.script_flush()
    [reply] = connection.run(r, [script.command(keys=keys, args=args)])
    assert isinstance(reply, NoScriptError)
    assert r.hget("h", "f") == b"4"
    script.load(r)
    assert connection.run(r, [script.command(keys=keys, args=args)]) == [[]]
    # Queued on a transaction: EVAL with the text, so a flush does not matter.
    r.script_flush()
    with r.pipeline() as pipe:
        script.queue(pipe, keys=keys, args=args)
        pipe.hget("h", "f")
        assert pipe.execute() == [[], b"8"]


def test_names_are_checked_against_the_header(r: redis.Redis) -> None:
    script = scripts.load("quarantine_incr")
    args = {"quarantine_keep": 60, "quarantine_mark": "m", "field": "f", "increment": 1}
    with pytest.raises(ScriptError, match="KEYS missing hash_aside"):
        script(r, keys={"hash": "h"}, args=args)
    with pytest.raises(ScriptError, match="ARGV not in its header by"):
        script(r, keys={"hash": "h", "hash_aside": "a"}, args={**args, "by": 2})
    guard = scripts.load("quarantine_guard")
    with pytest.raises(ScriptError, match="types takes a list"):
        guard.command(keys={"guarded": ["k", "a"]}, args={"quarantine_keep": 1, "quarantine_mark": "m",
                                                          "types": "hash"})
    assert r.keys("*") == []


@pytest.mark.parametrize("text, problem", [
    ("local x = 1\n", "first line"),
    ("-- s: does\n-- KEYS[1] a: x\n", "Returns"),
    ("-- s: does\n-- KEYS[2] a: x\n-- Returns: 1\n", "not at position 1"),
    ("-- s: does\n-- KEYS[1] a: x\n-- ARGV[1] a: y\n-- Returns: 1\n", "given twice"),
    ("-- s: does\n-- ARGV[1..] a: x\n-- ARGV[2] b: y\n-- Returns: 1\n", "comes after ARGV"),
    ("-- s: does\n-- KEYS[1] a\n-- Returns: 1\n", "cannot read"),
    ("-- s: does\n-- include: nothing_such\n-- Returns: 1\n", "no "),
])
def test_a_malformed_header_is_a_clear_error(text: str, problem: str) -> None:
    with pytest.raises(ScriptError, match=problem):
        scripts.Lua(text, "bad.lua")


def test_a_missing_script_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ScriptError, match="cannot read the script"):
        scripts.load("absent", tmp_path)
    (tmp_path / "other.lua").write_text("-- named: does\n-- Returns: 1\nreturn 1\n")
    with pytest.raises(ScriptError, match="names it named"):
        scripts.load("other", tmp_path)


def test_positions_from_across_a_process_boundary_are_named_back() -> None:
    claim = scripts.load("idempotency_claim")
    keys, args = claim.arguments({"record": "r", "held": ["h"]}, {"claim": "{}", "ttl_ms": 5})
    assert (keys, args) == (["r", "h"], ["{}", 5])
    assert claim.by_name(keys, args) == ({"record": "r", "held": ["h"]}, {"claim": "{}", "ttl_ms": 5})
    assert claim.by_name(["r"], args) == ({"record": "r", "held": []}, {"claim": "{}", "ttl_ms": 5})
    with pytest.raises(ScriptError, match="takes 2 ARGV, not 3"):
        claim.by_name(keys, [*args, "more"])
    with pytest.raises(ScriptError, match="takes 1 or more KEYS, not 0"):
        claim.by_name([], args)


def test_the_scripts_ship_in_the_package() -> None:
    import fnmatch
    import tomllib

    root = Path(__file__).resolve().parent.parent
    patterns = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["broker"]
    files = [p.relative_to(root / "broker").as_posix() for p in scripts.FOLDER.rglob("*.lua")]
    assert files and [f for f in files if not any(fnmatch.fnmatch(f, pattern) for pattern in patterns)] == []


def test_what_is_sent_has_no_comments_or_indentation_and_runs_the_same(r: redis.Redis) -> None:
    text = ("-- add: a header\nlocal n = tonumber(ARGV[1])  \n\n  -- a comment\n  if n > 1 then\n"
            "    return n + 1\n  end\nreturn 's -- not a comment'\n")
    sent = scripts.compact(text)
    assert sent == "local n = tonumber(ARGV[1])\nif n > 1 then\nreturn n + 1\nend\nreturn 's -- not a comment'\n"
    assert r.eval(sent, 0, 5) == r.eval(text, 0, 5) == 6
    assert r.eval(sent, 0, 0) == r.eval(text, 0, 0) == b"s -- not a comment"
