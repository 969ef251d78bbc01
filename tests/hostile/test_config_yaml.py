"""Issue 13 row 13: a hostile pipeline file gets a clear config error and exit 2, never a
MemoryError, a RecursionError traceback or gigabytes of memory."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.hostile.files_harness import record_figures, run_to_end


def billion_laughs() -> str:
    """The classic: 9 levels of 10 aliases each, 10^9 strings from under 1 KB."""
    lines = ['l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, 10):
        refs = ", ".join([f"*l{i - 1}"] * 10)
        lines.append(f"l{i}: &l{i} [{refs}]")
    return "\n".join(lines) + "\n"


ATTACKS = {
    "billion-laughs": (billion_laughs(), "expands to more than"),
    "recursive-alias": ("sources: &s {a: *s}\nsinks: {}\n", "refers to a value that contains it"),
    "recursive-list": ("a: &a [*a]\n", "refers to a value that contains it"),
    "deep-nesting": ("sources: " + "[" * 20_000 + "]" * 20_000 + "\n", "nested deeper than"),
    "list-as-key": ("sources:\n  ? [a, b]\n  : 1\n", "a key must be a plain value"),
    "python-tag": ("data_dir: !!python/name:os.system ''\n", "could not determine a constructor"),
    "not-utf8": (b"sources: {a: \xff\xfe}\n", "not UTF-8"),
    "nul-in-a-path": ('data_dir: "/tmp/x\\0y"\n', "a NUL character in the value"),
}


@pytest.mark.parametrize("command", ["validate", "run"])
@pytest.mark.parametrize("attack", list(ATTACKS))
def test_hostile_yaml_is_one_config_error_and_exit_2(tmp_path: Path, attack: str, command: str) -> None:
    text, expected = ATTACKS[attack]
    f = tmp_path / "pipeline.yaml"
    f.write_bytes(text.encode() if isinstance(text, str) else text)
    if attack == "billion-laughs":
        assert len(text) < 1000
    r = run_to_end([command, "-c", str(f)], tmp_path, timeout=60)
    assert r.rc == 2, r.stderr[-3000:]
    r.assert_within_limits()
    # a line naming it (a problem found while reading is listed with the file's other ones, by line)
    lines = r.stderr.splitlines()
    assert expected in r.stderr and all(line.startswith(f"{f}:") for line in lines), r.stderr
    assert len(lines) <= 3, r.stderr
    if command == "run":
        record_figures(f"row 13: {attack}", r, good=None)


def test_an_unusable_data_dir_is_a_config_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    r = run_to_end(
        ["tail", "--once", "--data-dir", str(blocker / "state"), "--paths", str(tmp_path / "none" / "*.log")], tmp_path
    )
    assert r.rc == 2, r.stderr
    r.assert_within_limits()
    assert f"cannot use the data directory {blocker / 'state'}" in r.stderr
