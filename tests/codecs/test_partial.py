"""The one rule for rejoining a line a driver split (collector/codecs/partial.py)."""

from __future__ import annotations

from collector.codecs.partial import PartialLine


def test_parts_are_kept_up_to_the_cap_then_cut_at_a_character_boundary():
    p = PartialLine()
    assert p.add("a" * 6, 10)
    assert p.size == 6 and not p.truncated
    assert not p.add("é" * 3, 10)  # 6 bytes of UTF-8 in a room of 4: two characters fit
    assert p.text() == "a" * 6 + "éé" and p.truncated and p.size == 10
    assert not p.add("more", 10)  # later parts are ignored
    assert p.text() == "a" * 6 + "éé"


def test_a_multibyte_character_is_never_split():
    p = PartialLine()
    p.add("€" * 5, 7)  # 3 bytes each: two fit in 7, the third would be cut in half
    assert p.text() == "€€" and p.truncated
    assert p.text().encode().decode() == "€€"


def test_sizes_are_bytes_not_characters():
    p = PartialLine()
    assert p.add("ü" * 4, 8)
    assert p.size == 8 and not p.truncated
    assert not p.add("x", 8)
