from __future__ import annotations

import pytest

from collector.acks import Ack, OrderedAcks


def test_ack_fires_once_all_holders_are_done():
    fired = []
    a = Ack(lambda: fired.append(1))
    a.retain(2)
    a.done()
    a.done()
    assert fired == []
    a.done()
    assert fired == [1]
    with pytest.raises(RuntimeError):
        a.done()


def test_ordered_acks_advance_only_over_a_contiguous_prefix():
    commits = []
    oa = OrderedAcks(0, commits.append)
    a1, a2, a3 = oa.track(10), oa.track(20), oa.track(30)
    a3.done()
    a2.done()
    assert oa.committed == 0 and commits == []  # 10 is still in flight: a hole
    a1.done()
    assert oa.committed == 30 and commits == [30]


def test_reset_forgets_in_flight_batches():
    oa = OrderedAcks(0)
    old = oa.track(100)
    oa.reset(0)
    new = oa.track(5)
    old.done()  # a late completion from before the reset changes nothing
    assert oa.committed == 0
    new.done()
    assert oa.committed == 5
