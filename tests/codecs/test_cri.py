"""The CRI line format (containerd, CRI-O) parsed into the same records as json-file."""

from __future__ import annotations

from collector.codecs.cri import CriLineReader
from tests.helpers import cri_line, split_like_cri


def test_lines_become_records_with_offsets_time_and_stream():
    a = cri_line("hello")
    b = cri_line("err", "stderr", "2024-05-01T12:00:00.5+02:00")
    p = CriLineReader().parse(a + b, 100)
    assert p.messages == ["hello", "err"]
    assert p.streams == ["stdout", "stderr"]
    assert p.times == ["2024-05-01T12:00:00.000000001Z", "2024-05-01T12:00:00.5+02:00"]  # kept as written
    assert p.offsets == [100, 100 + len(a)]
    assert p.consumed == len(a + b) and not p.bad


def test_spaces_in_the_message_and_empty_messages_are_kept():
    data = cri_line("  two leading, trailing  ") + cri_line("") + b"2024-05-01T12:00:00Z stdout F\n"
    p = CriLineReader().parse(data, 0)
    assert p.messages == ["  two leading, trailing  ", "", ""]


def test_a_torn_last_line_is_not_consumed():
    whole = cri_line("one")
    p = CriLineReader().parse(whole + cri_line("two")[:-3], 0)
    assert p.messages == ["one"] and p.consumed == len(whole)


def test_partials_are_rejoined_per_stream_even_when_interleaved():
    long = "x" * 40000
    parts = split_like_cri(long).splitlines(keepends=True)
    assert [ln.split(b" ")[2] for ln in parts] == [b"P", b"P", b"F"]
    err = cri_line("meanwhile on stderr", "stderr")
    r = CriLineReader()
    p = r.parse(parts[0] + err + parts[1] + parts[2], 0)
    assert p.messages == ["meanwhile on stderr", long]
    assert p.offsets == [len(parts[0]), 0]  # the joined record keeps its first part's offset (its id)
    assert p.times[1] == "2024-05-01T12:00:01Z" and not p.flags


def test_a_pending_partial_holds_the_safe_offset_back():
    parts = split_like_cri("y" * 20000).splitlines(keepends=True)
    r = CriLineReader()
    first = cri_line("done")
    p = r.parse(first + parts[0], 0)
    assert p.messages == ["done"]
    end = len(first + parts[0])
    assert r.safe_offset(end) == len(first)  # a restart reads the P part again
    p = r.parse(parts[1], end)
    assert p.messages == ["y" * 20000] and r.safe_offset(end + len(parts[1])) == end + len(parts[1])


def test_a_joined_line_over_the_limit_is_cut_and_flagged():
    r = CriLineReader(max_record_bytes=4096)
    p = r.parse(split_like_cri("z" * 10000, size=1000), 0)
    assert p.messages == ["z" * 4096] and p.flags == {0: ["truncated"]}


def test_malformed_lines_are_set_aside_with_reasons_and_the_rest_flows():
    good = cri_line("good")
    bad = [
        b"garbage",
        b"2024-05-01T12:00:00Z stdin F wrong stream",
        b"2024-05-01T12:00:00Z stdout X wrong tag",
        b"yesterday stdout F bad time",
        b'{"log":"json-file, not CRI\\n","stream":"stdout","time":"2024-05-01T12:00:00Z"}',
    ]
    data = good + b"".join(x + b"\n" for x in bad) + b"\n" + cri_line("after")
    p = CriLineReader().parse(data, 0)
    assert p.messages == ["good", "after"]
    assert [b.raw for b in p.bad] == bad
    assert p.bad[0].offset == len(good)
    reasons = [b.reason for b in p.bad]
    assert "expected '<time> <stream> <P|F> <message>'" in reasons[0]
    assert "stream" in reasons[1] and "tag" in reasons[2] and "RFC 3339" in reasons[3]
    assert "json-file" in reasons[4]


def test_tags_after_a_colon_are_accepted():
    p = CriLineReader().parse(cri_line("part ", tag="P:x") + cri_line("end", tag="F:x"), 0)
    assert p.messages == ["part end"]


def test_invalid_utf8_is_replaced_not_dropped():
    p = CriLineReader().parse(cri_line(b"caf\xe9 ok"), 0)
    assert p.messages == ["caf\ufffd ok"] and not p.bad


def test_flush_emits_a_dangling_partial_flagged_incomplete():
    r = CriLineReader()
    r.parse(cri_line("half", tag="P"), 0)
    from collector.codecs.docker_json import Parsed

    out = Parsed()
    r.flush(out)
    assert out.messages == ["half"] and out.flags == {0: ["incomplete"]}
