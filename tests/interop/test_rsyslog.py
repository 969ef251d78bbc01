"""rsyslog's omfwd (Debian's rsyslog 8) -> the syslog source.

A private rsyslogd (its own configuration, sockets and work directory; installed by
tests/prepare.d/60-syslog-journal.sh) takes messages from util-linux ``logger`` on three unix
sockets, each bound to a ruleset with one omfwd action: UDP with the traditional (RFC 3164)
template, TCP with octet counting and the RFC 5424 template, TCP with newline framing and the
high-precision forward template.  Every message arrives once, with its tag, severity and facility
(and, from the RFC 5424 template, the leading space rsyslog keeps in a legacy message's text).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from tests.helpers import wait_until
from tests.sources.test_syslog import syslog_collector

MODES = {
    # ruleset: (protocol, omfwd options)
    "udp3164": ("udp", 'template="RSYSLOG_TraditionalForwardFormat"'),
    "tcp5424octet": ("tcp", 'TCP_Framing="octet-counted" template="RSYSLOG_SyslogProtocol23Format"'),
    "tcpforward": ("tcp", 'template="RSYSLOG_ForwardFormat"'),
}


def rsyslog_config(work: Path, udp_port: int, tcp_port: int) -> str:
    lines = [f'global(workDirectory="{work}")', 'module(load="imuxsock" SysSock.Use="off")']
    for name, (proto, opts) in MODES.items():
        port = udp_port if proto == "udp" else tcp_port
        lines.append(
            f'ruleset(name="{name}") {{ action(type="omfwd" target="127.0.0.1" port="{port}" protocol="{proto}" '
            f'{opts} action.resumeRetryCount="-1") }}'
        )
        lines.append(f'input(type="imuxsock" Socket="{work}/{name}.sock" Ruleset="{name}")')
    return "\n".join(lines) + "\n"


def test_rsyslog_omfwd_udp_tcp_octet_counted_and_newline(tmp_path):
    rsyslogd = shutil.which("rsyslogd") or "/usr/sbin/rsyslogd"
    if not os.path.exists(rsyslogd):
        pytest.fail("rsyslogd is missing: run tests/prepare.sh (tests/prepare.d/60-syslog-journal.sh)", pytrace=False)
    work = tmp_path / "rsyslog"
    work.mkdir()
    n = 100
    with syslog_collector(tmp_path, ["udp://127.0.0.1:0", "tcp://127.0.0.1:0"]) as c:
        conf = work / "rsyslog.conf"
        conf.write_text(rsyslog_config(work, c.port("udp"), c.port("tcp")))
        log = open(work / "rsyslogd.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(
            [rsyslogd, "-n", "-f", str(conf), "-i", str(work / "rsyslogd.pid")], stdout=log, stderr=log
        )
        try:
            wait_until(lambda: all((work / f"{m}.sock").exists() for m in MODES), timeout=30, what="rsyslog sockets")
            for mode in MODES:
                for i in range(n):
                    sock, text = str(work / f"{mode}.sock"), f"{mode} line {i} with  spaces: and colons"
                    subprocess.run(
                        ["logger", "-u", sock, "-d", "-t", f"rs-{mode}", "-p", "mail.err", text],
                        check=True,
                        timeout=30,
                    )
            recs = c.wait(len(MODES) * n, timeout=60)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
            log.close()
    assert len(recs) == len(MODES) * n, (work / "rsyslogd.log").read_text()
    for mode in MODES:
        mine = [r for r in recs if r["log"]["syslog"].get("appname") == f"rs-{mode}"]
        # rsyslog keeps the space after a legacy message's "tag:" in its msg property, and its RFC 5424
        # template sends it: the MSG on the wire starts with it, and we keep MSG as it was sent
        lead = " " if mode == "tcp5424octet" else ""
        assert sorted(r["message"] for r in mine) == sorted(
            lead + f"{mode} line {i} with  spaces: and colons" for i in range(n)
        )
        for r in mine:
            sl = r["log"]["syslog"]
            assert sl["severity"] == {"code": 3, "name": "error"} and sl["facility"] == {"code": 2, "name": "mail"}
            assert r["host"]["name"] and r["tags"] == [f"rs-{mode}"]
        if mode == "tcp5424octet":
            assert all(r["log"]["syslog"]["version"] == "1" for r in mine)
        else:
            assert all("version" not in r["log"]["syslog"] for r in mine)
