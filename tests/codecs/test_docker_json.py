from __future__ import annotations

from collector.codecs.docker_json import LineReader
from tests.helpers import docker_line, split_like_docker


def test_lines_become_records_with_offsets_and_no_trailing_newline():
    data = docker_line("hello\n") + docker_line("err\n", "stderr", "2024-05-01T12:00:00.5Z")
    p = LineReader().parse(data, 100)
    assert p.messages == ["hello", "err"]
    assert p.streams == ["stdout", "stderr"]
    assert p.times == ["2024-05-01T12:00:00.000000001Z", "2024-05-01T12:00:00.5Z"]
    assert p.offsets == [100, 100 + len(docker_line("hello\n"))]
    assert p.consumed == len(data)
    assert not p.bad


def test_a_torn_last_line_is_not_consumed():
    whole = docker_line("one\n")
    torn = docker_line("two\n")[:-10]
    p = LineReader().parse(whole + torn, 0)
    assert p.messages == ["one"]
    assert p.consumed == len(whole)


def test_docker_partials_are_rejoined_per_stream_even_when_interleaved():
    long = "x" * 40000
    parts = split_like_docker(long).splitlines(keepends=True)
    assert len(parts) == 3
    err = docker_line("meanwhile on stderr\n", "stderr")
    data = parts[0] + err + parts[1] + parts[2] + docker_line("after\n")
    r = LineReader()
    p = r.parse(data, 0)
    assert p.messages == ["meanwhile on stderr", long, "after"]
    assert p.offsets[1] == 0  # the joined line is identified by its first part
    assert p.streams == ["stderr", "stdout", "stdout"]
    assert not r.pending


def test_a_pending_partial_holds_back_the_safe_offset():
    parts = split_like_docker("y" * 20000).splitlines(keepends=True)
    r = LineReader()
    first = docker_line("before\n")
    p = r.parse(first + parts[0], 0)
    assert p.messages == ["before"]
    assert r.safe_offset(len(first) + len(parts[0])) == len(first)
    p2 = r.parse(parts[1], len(first) + len(parts[0]))
    assert p2.messages == ["y" * 20000] and p2.offsets == [len(first)]
    assert r.safe_offset(999999) == 999999


def test_oversized_rejoined_lines_are_truncated_and_flagged_not_dropped():
    r = LineReader(max_record_bytes=20000)
    p = r.parse(split_like_docker("z" * 50000) + docker_line("next\n"), 0)
    assert len(p.messages[0]) == 20000
    assert p.flags[0] == ["truncated"]
    assert p.messages[1] == "next"


def test_malformed_lines_are_reported_with_offset_and_the_next_line_flows():
    good1 = docker_line("a\n")
    bad_json = b'{"log":"broken\n'
    bad_utf8 = b'{"log":"\xff\xfe\\n","stream":"stdout","time":"2024-05-01T12:00:00Z"}\n'
    wrong_shape = b'{"message":"not docker"}\n'
    nul = b"\x00\x00\x00\n"
    good2 = docker_line("b\n")
    data = good1 + bad_json + bad_utf8 + wrong_shape + nul + good2
    p = LineReader().parse(data, 0)
    assert p.messages == ["a", "b"]
    assert [b.offset for b in p.bad] == [
        len(good1),
        len(good1 + bad_json),
        len(good1 + bad_json + bad_utf8),
        len(good1 + bad_json + bad_utf8 + wrong_shape),
    ]
    assert p.bad[0].reason.startswith("bad JSON")
    assert p.bad[1].reason == "invalid UTF-8"
    assert "missing field 'log'" in p.bad[2].reason
    assert p.consumed == len(data)


def test_unicode_and_escapes_survive():
    msg = 'caf\u00e9 \u65e5\u672c "quoted" <tag> & tab\there \u2705'
    p = LineReader().parse(docker_line(msg + "\n"), 0)
    assert p.messages == [msg]


def test_attrs_are_kept():
    line = b'{"log":"x\\n","stream":"stdout","attrs":{"com.example.team":"web"},"time":"2024-05-01T12:00:00Z"}\n'
    p = LineReader().parse(line, 0)
    assert p.attrs == {0: {"com.example.team": "web"}}


def test_flush_emits_an_unfinished_partial_flagged_incomplete():
    r = LineReader()
    part = split_like_docker("q" * 20000).splitlines(keepends=True)[0]
    r.parse(part, 0)
    from collector.codecs.docker_json import Parsed

    out = Parsed()
    r.flush(out)
    assert out.messages == ["q" * 16384] and out.flags[0] == ["incomplete"]
