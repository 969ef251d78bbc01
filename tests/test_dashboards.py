"""dashboards/: Kibana saved objects (NDJSON), and `collector setup --kibana` importing them.

Kibana cannot run here. What is checked instead:
* the files themselves: valid NDJSON, every object with id/type/attributes, references that
  resolve inside the file, the data view on what the sink writes (`logs-docker-*`, @timestamp);
* every field a dashboard, search or visualization uses exists in the mappings `collector setup`
  installs: in `mapped_fields()`, and in the REAL mapping of a data stream after a record went
  through the sink into a real engine (a dashboard on a missing field is how these usually break);
* the import request, against a stand-in for Kibana that checks the documented contract of
  POST /api/saved_objects/_import (overwrite=true, `kbn-xsrf`, multipart form-data with a `file`
  field holding the .ndjson) and answers as Kibana does, success and refusal. It is a stand-in,
  not Kibana: whether Kibana 8.x/9.x accepts these objects is not proven here.
"""

from __future__ import annotations

import email.parser
import email.policy
import json
import re
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from collector import levels
from collector.sinks.elasticsearch.templates import index_pattern, mapped_fields, mappings
from tests.helpers import REPO, QuietHandler, StandInServer, docker_lines, run_cli, run_once

FILES = sorted((REPO / "dashboards").glob("*.ndjson"))
TYPES = {"index-pattern", "search", "visualization", "dashboard", "lens"}
DATA_VIEW = "collector-logs-docker"


def objects() -> list[dict[str, Any]]:
    out = []
    for f in FILES:
        for n, line in enumerate(f.read_text().splitlines(), 1):
            if line.strip():
                try:
                    out.append(json.loads(line))
                except ValueError as e:
                    raise AssertionError(f"{f.name}:{n}: not JSON: {e}") from None
    return out


def by_type(t: str) -> list[dict[str, Any]]:
    return [o for o in objects() if o["type"] == t]


def referenced_fields() -> dict[str, set[str]]:
    """field -> the objects using it: columns, sort, aggregations, time field, KQL queries."""
    used: dict[str, set[str]] = {}

    def use(field: str, who: str) -> None:
        used.setdefault(field, set()).add(who)

    kql_field = re.compile(r"([A-Za-z_@][\w.@]*)\s*(?::|<=|>=|<|>)")
    for o in objects():
        a, who = o["attributes"], f"{o['type']}:{o['id']}"
        if o["type"] == "index-pattern":
            use(a["timeFieldName"], who)
        for c in a.get("columns", []):
            use(c, who)
        for s in a.get("sort", []):
            use(s[0], who)
        if "visState" in a:
            for agg in json.loads(a["visState"])["aggs"]:
                if "field" in agg["params"]:
                    use(agg["params"]["field"], who)
        source = json.loads(a.get("kibanaSavedObjectMeta", {}).get("searchSourceJSON") or "{}")
        for f in kql_field.findall((source.get("query") or {}).get("query") or ""):
            use(f, who)
    return used


def test_the_ndjson_is_valid_and_complete():
    assert FILES, "no dashboards/*.ndjson"
    objs = objects()
    ids = [(o["type"], o["id"]) for o in objs]
    assert len(ids) == len(set(ids)), "duplicate ids"
    for o in objs:
        assert {"id", "type", "attributes"} <= o.keys(), o
        assert o["type"] in TYPES, o["type"]
        assert o["attributes"].get("title"), o["id"]
        for k in ("visState", "uiStateJSON", "panelsJSON", "optionsJSON"):
            if k in o["attributes"]:
                json.loads(o["attributes"][k])
        if "kibanaSavedObjectMeta" in o["attributes"]:
            json.loads(o["attributes"]["kibanaSavedObjectMeta"]["searchSourceJSON"])


# Kibana's saved-object import format since 8.8: the type's version in `typeMigrationVersion`
# (`migrationVersion` is deprecated) and the core's in `coreMigrationVersion` (8.8.0, as Kibana's own
# sample data). An object marked above the last migration Kibana knows for its type is refused on
# import: "Document ... belongs to a more recent version of Kibana [v] when the last known version is
# [w]" (core-saved-objects-migration-server-internal: document_migrator, downgradeRequired), where the
# last known version is the highest of the type's `migrations` and its `convertToMultiNamespaceTypeVersion`.
# Those of Kibana 8.8, the first release with this format (later ones only add), from its source:
KIBANA_LAST_KNOWN = {
    "index-pattern": "8.0.0",  # data_views: migrations 6.5.0, 7.6.0, 7.11.0; convertToMultiNamespaceTypeVersion 8.0.0
    "search": "8.0.0",  # saved_search: migrations 6.7.2 ... 7.9.3; convertToMultiNamespaceTypeVersion 8.0.0
    "visualization": "8.5.0",  # visualizations: ... 8.0.0, 8.1.0 (pie), 8.3.0 (legend size), 8.5.0 (TSVB icon)
    "dashboard": "8.0.0",  # at least: convertToMultiNamespaceTypeVersion 8.0.0 (migrations 7.17.3 + embeddables)
}
# What each of ours is written for: the 8.0.0 shape; Kibana runs the later migrations of its type on import
# (visualization: 8.1.0, 8.3.0, 8.5.0), so none is marked above what its attributes are.
OURS = {"index-pattern": "8.0.0", "search": "8.0.0", "visualization": "8.0.0", "dashboard": "8.0.0"}


def _semver(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in v.split("."))


def test_every_object_is_marked_with_the_exact_version_kibana_accepts_for_its_type():
    assert OURS.keys() == {o["type"] for o in objects()}  # (a new type needs its row above)
    for t, v in OURS.items():
        assert _semver(v) <= _semver(KIBANA_LAST_KNOWN[t]), f"{t} {v} is above what Kibana knows: refused"
    for o in objects():
        assert "migrationVersion" not in o, f"{o['id']}: the deprecated migrationVersion"
        assert o["typeMigrationVersion"] == OURS[o["type"]], o["id"]
        assert o["coreMigrationVersion"] == "8.8.0", o["id"]


def test_references_resolve_inside_the_file():
    objs = objects()
    present = {(o["type"], o["id"]) for o in objs}
    for o in objs:
        for r in o.get("references", []):
            assert (r["type"], r["id"]) in present, f"{o['id']} refers to missing {r}"
        src = o["attributes"].get("kibanaSavedObjectMeta", {}).get("searchSourceJSON")
        if src and "indexRefName" in json.loads(src):
            names = {r["name"] for r in o["references"]}
            assert json.loads(src)["indexRefName"] in names, o["id"]
    for d in by_type("dashboard"):
        names = {r["name"] for r in d["references"]}
        for p in json.loads(d["attributes"]["panelsJSON"]):
            assert p["panelRefName"] in names, p


def test_the_data_view_is_what_the_sink_writes():
    (dv,) = by_type("index-pattern")
    assert dv["id"] == DATA_VIEW
    assert dv["attributes"]["title"] == index_pattern("logs-docker-default") == "logs-docker-*"
    assert dv["attributes"]["timeFieldName"] == "@timestamp"


def test_the_saved_search_and_the_dashboard_have_what_was_asked():
    (s,) = by_type("search")
    assert s["attributes"]["columns"] == ["container.name", "stream", "message"]
    assert s["attributes"]["sort"] == [["@timestamp", "desc"]]
    (d,) = by_type("dashboard")
    panels = {(r["type"], r["id"]) for r in d["references"]}
    assert ("search", s["id"]) in panels  # the table of the latest lines
    vis = {o["id"]: json.loads(o["attributes"]["visState"]) for o in by_type("visualization")}
    assert all(("visualization", v) in panels for v in vis)

    def terms(v: dict[str, Any]) -> list[str]:
        return [a["params"]["field"] for a in v["aggs"] if a["type"] == "terms"]

    def over_time(v: dict[str, Any]) -> bool:
        return any(a["type"] == "date_histogram" for a in v["aggs"])

    assert over_time(vis["collector-log-volume"]) and terms(vis["collector-log-volume"]) == ["container.name"]
    assert terms(vis["collector-stderr-share"]) == ["stream"]
    assert terms(vis["collector-top-containers"]) == ["container.name"]
    errors = next(o for o in by_type("visualization") if o["id"] == "collector-errors-by-container")
    query = json.loads(errors["attributes"]["kibanaSavedObjectMeta"]["searchSourceJSON"])["query"]["query"]
    assert query.startswith('log.syslog.severity.code <= 3 or log.level : ("error"')
    assert all(w in levels.NAMES for w in re.findall(r"\"(\w+)\"", query))  # one vocabulary


def test_every_field_used_is_in_the_installed_mappings():
    used = referenced_fields()
    assert {"container.name", "stream", "message", "@timestamp", "log.level", "log.syslog.severity.code"} <= set(used)
    missing = {f: sorted(w) for f, w in used.items() if f not in mapped_fields()}
    assert not missing, f"dashboards use fields the templates do not map: {missing}"


AGGREGATABLE = {"keyword", "long", "integer", "date", "date_nanos", "boolean", "ip", "double"}


def flatten(props: dict[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in props.items():
        if "properties" in v:
            out.update(flatten(v["properties"], f"{prefix}{k}."))
        if "type" in v:
            out[prefix + k] = v["type"]
    return out


def test_every_field_used_is_in_the_real_mapping_of_a_data_stream(search_engine, es_target, tmp_path):
    """A record through the real sink into a real engine, then GET <data stream>/_mapping."""
    log = tmp_path / "c" / "abc-json.log"
    log.parent.mkdir()
    log.write_bytes(docker_lines(["hello"]))
    rc = run_once(
        {
            "data_dir": str(tmp_path / "state"),
            "sources": {"f": {"type": "docker_json_file", "paths": [str(log)]}},
            "sinks": {
                "es": {"type": "elasticsearch", "inputs": ["f"], "hosts": [search_engine.url], "data_stream": es_target}
            },
        }
    )
    assert rc == 0
    assert search_engine.count(es_target) == 1
    r = search_engine.request("GET", f"/{es_target}/_mapping")
    assert r.status == 200, r.body
    (index,) = r.body.values()
    real = flatten(index["mappings"]["properties"])
    for field, users in referenced_fields().items():
        assert field in real, f"{field} (used by {sorted(users)}) is not in the mapping of {es_target}"
    aggregated = {"container.name", "stream", "@timestamp", "log.level", "log.syslog.severity.code"}
    for field in aggregated:
        assert real[field] in AGGREGATABLE, f"{field} is mapped as {real[field]}: Kibana cannot aggregate on it"
    assert flatten(mappings()["properties"]).items() <= real.items()


# -- the import request -------------------------------------------------------------------------
class FakeKibana(StandInServer):
    """Checks POST /api/saved_objects/_import as Kibana documents it; answers like Kibana."""

    def __init__(self, refuse: str | None = None) -> None:
        self.refuse = refuse
        self.imports: list[dict[str, Any]] = []
        fake = self

        class Handler(QuietHandler):
            def bad(self, message: str) -> None:
                self.answer(400, {"statusCode": 400, "error": "Bad Request", "message": message})

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                url = urlsplit(self.path)
                if url.path != "/api/saved_objects/_import":
                    return self.answer(404, {"statusCode": 404, "error": "Not Found", "message": "Not Found"})
                if "kbn-xsrf" not in {k.lower() for k in self.headers}:
                    return self.bad("Request must contain a kbn-xsrf header.")
                if parse_qs(url.query).get("overwrite") != ["true"]:
                    return self.bad("expected overwrite=true (the dashboards replace their older versions)")
                ctype = self.headers.get("Content-Type", "")
                if not ctype.startswith("multipart/form-data; boundary="):
                    return self.answer(415, {"statusCode": 415, "error": "Unsupported Media Type", "message": ctype})
                msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
                    f"Content-Type: {ctype}\r\n\r\n".encode() + body
                )
                files = [p for p in msg.iter_parts() if p.get_param("name", header="content-disposition") == "file"]
                if len(files) != 1:
                    return self.bad("[request body.file]: expected value of type [Stream] but got [undefined]")
                part = files[0]
                filename = part.get_filename() or ""
                if not filename.endswith(".ndjson"):
                    return self.bad(f"Invalid file extension {filename}")
                objs = [json.loads(line) for line in part.get_payload(decode=True).decode().splitlines() if line]
                fake.imports.append({"filename": filename, "objects": objs})
                if fake.refuse == "missing_references":
                    (o,) = [x for x in objs if x["type"] == "dashboard"][:1]
                    return self.answer(
                        200,
                        {
                            "success": False,
                            "successCount": len(objs) - 1,
                            "errors": [
                                {
                                    "id": o["id"],
                                    "type": o["type"],
                                    "title": o["attributes"]["title"],
                                    "error": {
                                        "type": "missing_references",
                                        "references": [{"type": "search", "id": "x"}],
                                    },
                                    "meta": {"title": o["attributes"]["title"]},
                                }
                            ],
                        },
                    )
                if fake.refuse == "unauthorized":
                    return self.answer(401, {"statusCode": 401, "error": "Unauthorized", "message": "Unauthorized"})
                results = [
                    {"type": o["type"], "id": o["id"], "meta": {"title": o["attributes"]["title"]}, "overwrite": True}
                    for o in objs
                ]
                self.answer(
                    200, {"success": True, "successCount": len(objs), "successResults": results, "warnings": []}
                )

        super().__init__(Handler)


@pytest.fixture
def kibana():
    k = FakeKibana()
    yield k
    k.close()


def test_setup_installs_templates_and_imports_the_dashboards(search_engine, kibana):
    r = run_cli("setup", "--hosts", search_engine.url, "--kibana", kibana.url)
    assert r.returncode == 0, r.stderr
    assert [i["filename"] for i in kibana.imports] == [f.name for f in FILES]
    assert sum(len(i["objects"]) for i in kibana.imports) == len(objects())
    for f in FILES:
        assert f"imported {f.name}: " in r.stdout
    # the templates the dashboards rely on are really there
    t = search_engine.request("GET", "/_index_template/logs-docker")
    assert t.status == 200
    assert t.body["index_templates"][0]["index_template"]["index_patterns"] == ["logs-docker-*"]


@pytest.mark.parametrize("refusal", ["missing_references", "unauthorized"])
def test_a_kibana_refusal_fails_setup_with_the_reason(search_engine, refusal):
    k = FakeKibana(refuse=refusal)
    try:
        r = run_cli("setup", "--hosts", search_engine.url, "--kibana", k.url)
    finally:
        k.close()
    assert r.returncode != 0
    assert "Kibana refused" in r.stderr
    assert ("missing_references" if refusal == "missing_references" else "HTTP 401") in r.stderr


def test_an_unreachable_kibana_fails_setup(search_engine):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = run_cli("setup", "--hosts", search_engine.url, "--kibana", f"http://127.0.0.1:{port}")
    assert r.returncode != 0
    assert "cannot reach Kibana" in r.stderr
