"""`collector tap` on a real running `collector tail` (Docker's on-disk layout, metadata from the
config.v2.json files): each tap sees exactly the records it asked for and nothing else, says what
it skipped, and a tap that never reads neither slows nor stalls the pipeline."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import urllib.parse
from pathlib import Path

import orjson

from tests.helpers import Collector, Terminal, docker_line, read_ndjson, run_cli, wait_progressing, wait_until
from tests.test_telemetry import api_url

NAMES = ("web-1", "web-2", "db-1")


def make_root(root: Path) -> dict[str, Path]:
    """Three containers with empty logs: the collector follows them before anything is written."""
    logs = {}
    for n, name in enumerate(NAMES):
        cid = f"{n + 1:02d}" * 32
        d = root / "containers" / cid
        d.mkdir(parents=True)
        config = {"ID": cid, "Name": f"/{name}", "Config": {"Image": "app:1", "Labels": {}}}
        (d / "config.v2.json").write_bytes(orjson.dumps(config))
        logs[name] = d / f"{cid}-json.log"
        logs[name].write_bytes(b"")
    return logs


def write(logs: dict[str, Path], per_container: int, start: int = 0) -> None:
    for name, path in logs.items():
        with open(path, "ab") as f:
            f.write(b"".join(docker_line(f"{name} {i}\n") for i in range(start, start + per_container)))


def tail(root: Path, state: Path, out: Path) -> Collector:
    return Collector(
        "tail",
        "--docker-root",
        str(root),
        "--metadata",
        "files",
        "--tag",
        "{{.Name}}",
        "--data-dir",
        str(state),
        "-o",
        f"file:{out}",
        "--api",
        "127.0.0.1:0",
    )


class Tap:
    """`collector tap ...` in a subprocess, its stdout piped into a file (NDJSON)."""

    def __init__(self, tmp: Path, name: str, *args: str) -> None:
        self.out, self.err = tmp / f"{name}.out", tmp / f"{name}.err"
        with open(self.out, "wb") as o, open(self.err, "wb") as e:
            self.proc = subprocess.Popen([sys.executable, "-m", "collector", "tap", *args], stdout=o, stderr=e)

    def attached(self) -> bool:
        assert self.proc.poll() is None or "tapping" in self.stderr(), self.stderr()
        return "tapping" in self.stderr()

    def stderr(self) -> str:
        return self.err.read_text()

    def lines(self) -> list[bytes]:
        return self.out.read_bytes().splitlines()

    def messages(self) -> list[str]:
        return [orjson.loads(line)["message"] for line in self.lines()]

    def skipped(self) -> int:
        found = re.findall(r"sampling: ([\d,]+) records skipped", self.stderr())
        return int(found[-1].replace(",", "")) if found else 0

    def wait(self) -> int:
        return self.proc.wait(60)


def expected(names: tuple[str, ...], n: int) -> list[str]:
    return [f"{name} {i}" for name in names for i in range(n)]


def test_taps_see_exactly_the_matching_records_by_tag_container_component_and_limit(tmp_path):
    root, state, out = tmp_path / "docker", tmp_path / "state", tmp_path / "out.ndjson"
    logs = make_root(root)
    col = tail(root, state, out)
    with col.start(tmp_path / "err.log"):
        url = api_url(state, col)
        taps = {
            "web": Tap(tmp_path, "web", "--data-dir", str(state), "--tag", "web-*"),  # url from api.json
            "db": Tap(tmp_path, "db", "--url", url, "--container", "db-1"),
            "source": Tap(tmp_path, "source", "--url", url, "--component", "containers"),
            "limit": Tap(tmp_path, "limit", "--url", url, "--component", "meta", "--limit", "5"),
            "sampled": Tap(tmp_path, "sampled", "--url", url, "--rate", "50", "--container", "web-2"),
        }
        for tap in taps.values():
            wait_until(tap.attached, what="the taps to attach")
        write(logs, 200)
        wait_progressing(lambda: len(read_ndjson(out)), 600, what="records delivered")
        assert taps["limit"].wait() == 0, taps["limit"].stderr()
        assert col.stop() == 0, col.stderr()
        for tap in taps.values():
            assert tap.wait() == 0, tap.stderr()  # the collector stopped: each stream ended

    assert sorted(d["message"] for d in read_ndjson(out)) == sorted(expected(NAMES, 200))
    for tap in taps.values():
        assert all(line.startswith(b"{") for line in tap.lines())  # piped: NDJSON only, notices on stderr
        assert "Traceback" not in tap.stderr()
    # a record passes each component in order within a container; the tap keeps that order
    assert sorted(taps["web"].messages()) == sorted(expected(("web-1", "web-2"), 200))
    assert [m for m in taps["web"].messages() if m.startswith("web-1")] == expected(("web-1",), 200)
    assert taps["db"].messages() == expected(("db-1",), 200)
    assert all(d["container"]["name"] == "db-1" for d in map(orjson.loads, taps["db"].lines()))
    # the source's output: every record, before the docker_metadata transform named the containers
    assert sorted(taps["source"].messages()) == sorted(expected(NAMES, 200))
    assert all("name" not in orjson.loads(line).get("container", {}) for line in taps["source"].lines())
    assert len(taps["limit"].lines()) == 5
    for name in ("web", "db", "source"):
        assert "sampling" not in taps[name].stderr()
    # past --rate, records are skipped and said; what is shown plus what is skipped is the workload
    sampled = taps["sampled"]
    assert sampled.skipped() > 0, sampled.stderr()
    assert len(sampled.messages()) + sampled.skipped() == 200
    assert set(sampled.messages()) < set(expected(("web-2",), 200))


def test_a_tap_that_never_reads_neither_slows_nor_stalls_the_pipeline(tmp_path):
    root, state, out = tmp_path / "docker", tmp_path / "state", tmp_path / "out.ndjson"
    logs = make_root(root)
    col = tail(root, state, out)
    total = 3 * 10_000
    with col.start(tmp_path / "err.log"):
        url = urllib.parse.urlsplit(api_url(state, col))
        # a client with a tiny receive buffer that asks for everything (--rate 0) and reads nothing
        stuck = socket.socket()
        stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stuck.connect((url.hostname, url.port))
        stuck.sendall(b"GET /tap?component=meta&rate=0 HTTP/1.1\r\nHost: x\r\n\r\n")
        stuck.settimeout(60)
        received = b""
        while b"#tap " not in received or not received.endswith(b"\n"):  # its first line: attached
            received += stuck.recv(1)
        write(logs, 10_000)
        wait_progressing(lambda: len(read_ndjson(out)), total, what="records delivered past a stuck tap")
        # now read: what reached the tap plus what it counted as skipped is exactly the workload
        stuck.settimeout(30)
        seen = 0
        skipped = 0
        buf = b""
        while seen + skipped < total:
            chunk = stuck.recv(1 << 16)
            assert chunk, f"stream ended at {seen} seen + {skipped} skipped"
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for line in lines:
                if line.startswith(b"#skipped "):
                    skipped = int(line.split()[1])
                elif line.startswith(b"{"):
                    seen += 1
        assert skipped > 0 and seen + skipped == total
        stuck.close()
        assert col.stop() == 0, col.stderr()
    assert len(read_ndjson(out)) == total


def test_tap_on_a_terminal_prints_console_lines_until_ctrl_c(tmp_path):
    root, state, out = tmp_path / "docker", tmp_path / "state", tmp_path / "out.ndjson"
    logs = make_root(root)
    col = tail(root, state, out)
    with col.start(tmp_path / "err.log"), Terminal(tmp_path) as term:
        url = api_url(state, col)
        term.run(sys.executable, "-m", "collector", "tap", "--url", url, "--container", "web-1")
        wait_until(lambda: "tapping out (sink)" in term.screen(), what="the tap to attach")
        write(logs, 3)
        # time  container  tag  stream  message, as the console sink prints it
        want = [re.compile(rf"12:00:00\.000 web-1\s+web-1\s+stdout web-1 {i}$", re.M) for i in range(3)]
        wait_until(lambda: all(w.search(term.screen()) for w in want), what="three console lines")
        assert "db-1" not in term.screen() and "web-2" not in term.screen()
        term.keys("C-c")
        assert term.exit_code() == 0, term.screen()
        assert "Traceback" not in term.screen()
        assert col.stop() == 0


def test_tap_says_why_it_cannot_start(tmp_path):
    r = run_cli("tap", "--url", "http://127.0.0.1:1")
    assert r.returncode == 1 and "cannot reach http://127.0.0.1:1" in r.stderr, r.stderr
    root, state, out = tmp_path / "docker", tmp_path / "state", tmp_path / "out.ndjson"
    make_root(root)
    col = tail(root, state, out)
    with col.start(tmp_path / "err.log"):
        url = api_url(state, col)
        r = run_cli("tap", "--url", url, "--component", "nope")
        assert r.returncode == 2, r.stderr
        assert r.stderr.strip() == (
            "collector tap: no component 'nope' in this pipeline; components: out (sink), containers (source), "
            "meta (transform)"
        )
        r = run_cli("tap", "--url", url, "--tag", "a.{b")
        assert r.returncode == 2 and "collector tap: " in r.stderr and "Traceback" not in r.stderr, r.stderr
        assert col.stop() == 0


def test_taps_on_a_route_see_each_output_and_the_whole(tmp_path):
    """A transform with named outputs (route): `--component route.web` sees what leaves by that
    output only, `route._unmatched` the rest, `route` everything that leaves it."""
    root, state = tmp_path / "docker", tmp_path / "state"
    web_out, rest_out = tmp_path / "web.ndjson", tmp_path / "rest.ndjson"
    logs = make_root(root)
    config = tmp_path / "pipeline.yaml"
    config.write_text(
        f"""
data_dir: {state}
docker_root: {root}
api: {{listen: "tcp://127.0.0.1:0"}}
sources:
  containers: {{type: docker_json_file}}
transforms:
  meta: {{type: docker_metadata, inputs: [containers], metadata: files, tag: "{{{{.Name}}}}"}}
  split: {{type: route, inputs: [meta], routes: {{web: "web-*"}}}}
sinks:
  web: {{type: file, inputs: [split.web], path: {web_out}}}
  rest: {{type: file, inputs: [split._unmatched], path: {rest_out}}}
"""
    )
    col = Collector("run", "-c", str(config))
    with col.start(tmp_path / "err.log"):
        url = api_url(state, col)
        taps = {
            name: Tap(tmp_path, name, "--url", url, "--component", name)
            for name in ("split.web", "split._unmatched", "split")
        }
        for tap in taps.values():
            wait_until(tap.attached, what="the taps to attach")
        write(logs, 100)
        wait_progressing(lambda: len(read_ndjson(web_out)) + len(read_ndjson(rest_out)), 300, what="records delivered")
        assert col.stop() == 0, col.stderr()
        for tap in taps.values():
            assert tap.wait() == 0, tap.stderr()
    assert sorted(taps["split.web"].messages()) == sorted(expected(("web-1", "web-2"), 100))
    assert taps["split._unmatched"].messages() == expected(("db-1",), 100)
    assert sorted(taps["split"].messages()) == sorted(expected(NAMES, 100))
    assert "(transform)" in taps["split.web"].stderr(), taps["split.web"].stderr()
