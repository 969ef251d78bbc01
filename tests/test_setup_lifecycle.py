"""`collector setup` and index lifecycles (ILM, ISM): a contract test of the exact requests.

No engine here can have a lifecycle: Elasticsearch's ILM is x-pack (not on Maven Central) and
OpenSearch's ISM plugin (``org.opensearch.plugin:opensearch-index-management``) is not on Maven
Central either (its zip goes to OpenSearch's own snapshot repository only; checked for 2.1 to
3.4), so tests/services/search-engine cannot load it. What is checked instead, against a real
engine behind a stand-in:

* the stand-in answers the lifecycle endpoints as the APIs document them and refuses a request
  whose method, path or body does not have the documented shape (the JSON schemas below, from
  Elasticsearch's "create or update lifecycle policy" API and from OpenSearch's ISM API, whose
  policy parser is ``org.opensearch.indexmanagement.indexstatemanagement.model.Policy.parse``:
  unknown fields refused, ``description`` and ``default_state`` required, transitions to
  existing states, no transition out of a state that deletes, an update only with
  ``if_seq_no``/``if_primary_term``);
* everything else (``GET /``, the templates) goes to the real engine, which installs them;
* the test checks the list of requests setup made (method, path, query, body) and what it said.

A stand-in is not the plugin: whether ISM then rolls over and deletes is not proven here.
"""

from __future__ import annotations

import re
import threading
import time
import urllib.error
import urllib.request
import uuid
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jsonschema
import orjson
import pytest

from tests.conftest import SearchEngine
from tests.helpers import QuietHandler, StandInServer, run_cli

POLICY = "collector-logs"
TIME = r"^\d+(d|h|m|s|ms|micros|nanos)$"
SIZE = r"^\d+(b|kb|mb|gb|tb|pb)$"


def _obj(props: dict[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    return {"type": "object", "properties": props, "required": list(required), "additionalProperties": False}


# Elasticsearch: PUT _ilm/policy/<policy> (docs: "Create or update a lifecycle policy", and the
# phase/action tables of "Index lifecycle actions")
_ROLLOVER = {
    **_obj(
        {
            **{k: {"type": "string", "pattern": TIME} for k in ("max_age", "min_age")},
            **{k: {"type": "string", "pattern": SIZE} for k in ("max_size", "max_primary_shard_size")},
            **{k: {"type": "string", "pattern": SIZE} for k in ("min_size", "min_primary_shard_size")},
            **{k: {"type": "integer", "minimum": 1} for k in ("max_docs", "max_primary_shard_docs")},
            **{k: {"type": "integer", "minimum": 1} for k in ("min_docs", "min_primary_shard_docs")},
        }
    ),
    "anyOf": [{"required": [k]} for k in ("max_age", "max_size", "max_primary_shard_size", "max_docs")],
}
_ANY = {"type": "object"}  # an action we never send: its own parameters are not checked here
_ILM_ACTIONS = {  # the docs' table "phases and available actions"
    "hot": {
        "rollover": _ROLLOVER,
        **dict.fromkeys(
            ("set_priority", "unfollow", "readonly", "downsample", "shrink", "forcemerge", "searchable_snapshot"), _ANY
        ),
    },
    "warm": dict.fromkeys(
        ("set_priority", "unfollow", "readonly", "downsample", "allocate", "migrate", "shrink", "forcemerge"), _ANY
    ),
    "cold": dict.fromkeys(
        ("set_priority", "unfollow", "readonly", "downsample", "searchable_snapshot", "allocate", "migrate"), _ANY
    ),
    "frozen": dict.fromkeys(("unfollow", "searchable_snapshot"), _ANY),
    "delete": {"delete": _obj({"delete_searchable_snapshot": {"type": "boolean"}}), "wait_for_snapshot": _ANY},
}
ILM_POLICY = _obj(
    {
        "policy": _obj(
            {
                "_meta": {"type": "object"},
                "phases": {
                    **_obj(
                        {
                            phase: _obj({"min_age": {"type": "string", "pattern": TIME}, "actions": _obj(actions)})
                            for phase, actions in _ILM_ACTIONS.items()
                        }
                    ),
                    "minProperties": 1,
                },
            },
            ("phases",),
        )
    },
    ("policy",),
)

# OpenSearch ISM: PUT _plugins/_ism/policies/<policy> (docs: "ISM API", "Policies"; the parser:
# Policy.parse, State.parse, Transition/Conditions.parse, ISMTemplate.parse, RolloverAction)
_CONDITIONS = {
    **_obj(
        {
            "min_index_age": {"type": "string", "pattern": TIME},
            "min_rollover_age": {"type": "string", "pattern": TIME},
            "min_state_age": {"type": "string", "pattern": TIME},  # (ISM 3.x)
            "min_doc_count": {"type": "integer", "minimum": 1},
            "min_size": {"type": "string", "pattern": SIZE},
            "cron": _ANY,
        }
    ),
    "minProperties": 1,
    "maxProperties": 1,  # Conditions: "Cannot provide more than one Transition condition"
}
_ISM_ROLLOVER = _obj(
    {
        "min_size": {"type": "string", "pattern": SIZE},
        "min_primary_shard_size": {"type": "string", "pattern": SIZE},
        "min_doc_count": {"type": "integer", "minimum": 1},
        "min_index_age": {"type": "string", "pattern": TIME},
        "copy_alias": {"type": "boolean"},
    }
)
_ISM_ACTION_TYPES = {  # the docs' "ISM supported operations"
    "rollover": _ISM_ROLLOVER,
    "delete": _obj({}),
    "read_only": _obj({}),
    "read_write": _obj({}),
    **dict.fromkeys(
        (
            "force_merge",
            "replica_count",
            "close",
            "open",
            "notification",
            "snapshot",
            "index_priority",
            "allocation",
            "rollup",
            "transform",
            "shrink",
            "alias",
            "convert_index_to_remote",
        ),
        _ANY,
    ),
}
_ISM_ACTION = {  # one operation, with optional "retry" and "timeout" beside it
    **_obj(
        {
            **_ISM_ACTION_TYPES,
            "retry": _obj(
                {
                    "count": {"type": "integer", "minimum": 0},
                    "backoff": {"enum": ["exponential", "constant", "linear"]},
                    "delay": {"type": "string", "pattern": TIME},
                },
                ("count",),
            ),
            "timeout": {"type": "string", "pattern": TIME},
        }
    ),
    "oneOf": [{"required": [k]} for k in _ISM_ACTION_TYPES],
}
_ISM_TEMPLATE = _obj(
    {
        "index_patterns": {"type": "array", "minItems": 1, "items": {"type": "string"}},
        "priority": {"type": "integer", "minimum": 0},
        "last_updated_time": {"type": "integer"},
    },
    ("index_patterns",),
)
ISM_POLICY = _obj(
    {
        "policy": _obj(
            {
                "policy_id": {"type": "string"},  # (Policy.parse ignores these three)
                "last_updated_time": {"type": "integer"},
                "schema_version": {"type": "integer"},
                "description": {"type": "string"},
                "default_state": {"type": "string", "minLength": 1},
                "error_notification": {"type": ["object", "null"]},
                "states": {
                    "type": "array",
                    "minItems": 1,
                    "items": _obj(
                        {
                            "name": {"type": "string", "minLength": 1},
                            "actions": {"type": "array", "items": _ISM_ACTION},
                            "transitions": {
                                "type": "array",
                                "items": _obj(
                                    {"state_name": {"type": "string", "minLength": 1}, "conditions": _CONDITIONS},
                                    ("state_name",),
                                ),
                            },
                        },
                        ("name",),
                    ),
                },
                # one template or a list of them (Policy.parse takes both; the docs show the first)
                "ism_template": {"oneOf": [_ISM_TEMPLATE, {"type": "array", "items": _ISM_TEMPLATE}, {"type": "null"}]},
                "user": _ANY,
            },
            ("description", "default_state", "states"),
        )
    },
    ("policy",),
)


def ism_stored(policy: dict[str, Any], pid: str, now: int) -> dict[str, Any]:
    """The policy as ISM gives it back (GET): Policy.toXContent of what Policy.parse made of it.
    Each action gets the default retry (Action.configRetry = ActionRetry(3), exponential, 1m), a
    rollover its copy_alias, each template its last_updated_time; ism_template is always a list."""
    retry = {"count": 3, "backoff": "exponential", "delay": "1m"}

    def action(a: dict[str, Any]) -> dict[str, Any]:
        out = {"retry": retry, **a}
        if "rollover" in out:
            out["rollover"] = {**out["rollover"], "copy_alias": out["rollover"].get("copy_alias", False)}
        return out

    templates = policy.get("ism_template")
    if isinstance(templates, dict):
        templates = [templates]
    return {
        "policy_id": pid,
        "description": policy["description"],
        "last_updated_time": now,
        "schema_version": 21,
        "error_notification": policy.get("error_notification"),
        "default_state": policy["default_state"],
        "states": [
            {
                "name": st["name"],
                "actions": [action(a) for a in st.get("actions", [])],
                "transitions": st.get("transitions", []),
            }
            for st in policy["states"]
        ],
        "ism_template": None
        if templates is None
        else [{"priority": 0, **t, "last_updated_time": now} for t in templates],
    }


def ism_policy_problems(body: dict[str, Any]) -> list[str]:
    """What ISM's Policy/State constructors refuse beyond the shape."""
    p = body["policy"]
    names = [s["name"] for s in p["states"]]
    out = []
    if len(set(names)) != len(names):
        out.append("Policy cannot have duplicate state names")
    if p["default_state"] not in names:
        out.append("Policy must have a valid default state")
    for s in p["states"]:
        kinds = [k for a in s.get("actions", []) for k in a if k in _ISM_ACTION_TYPES]
        if "delete" in kinds and kinds[-1] != "delete":
            out.append(f"State={s['name']} must not contain an action after a delete action")
        if "delete" in kinds and s.get("transitions"):
            out.append(f"State={s['name']} cannot contain transitions if using delete action")
        out += [f"no state {t['state_name']!r}" for t in s.get("transitions", []) if t["state_name"] not in names]
    return out


class Seen:
    def __init__(self, method: str, path: str, query: dict[str, list[str]], body: Any) -> None:
        self.method, self.path, self.query, self.body = method, path, query, body

    def __repr__(self) -> str:
        return f"{self.method} {self.path}{'?' + str(self.query) if self.query else ''}"


class LifecycleEngine(StandInServer):
    """A real engine behind a stand-in that has ILM (``kind="ilm"``) or ISM (``kind="ism"``)."""

    def __init__(self, upstream: str, kind: str) -> None:
        self.upstream = upstream
        self.seen: list[Seen] = []
        self.refused: list[str] = []
        self.policies: dict[str, dict[str, Any]] = {}  # id -> {"policy" (as sent), "version"; ISM: "stored", "seq_no"}
        self._lock = threading.Lock()
        me = self

        class Handler(QuietHandler):
            def _any(self) -> None:
                raw = self.rfile.read(int(self.headers.get("content-length") or 0))
                url = urlsplit(self.path)
                body = orjson.loads(raw) if raw else None
                with me._lock:
                    me.seen.append(Seen(self.command, url.path, parse_qs(url.query), body))
                    answer = me.lifecycle(kind, self.command, url.path, parse_qs(url.query), body)
                if answer is not None:
                    self.answer(*answer)
                    return
                if kind == "ilm" and url.path.startswith("/_component_template/") and body is not None:
                    # the settings ILM registers are unknown to an engine without it: checked
                    # (below), then taken out of what goes on to the real engine
                    body = orjson.loads(raw)  # (a copy: what was seen stays as it was sent)
                    settings = body.get("template", {}).get("settings", {})
                    for k in [k for k in settings if k.startswith("index.lifecycle.")]:
                        if settings.pop(k) not in me.policies:
                            me.refused.append(f"{k} names no installed policy")
                    raw = orjson.dumps(body)
                req = urllib.request.Request(upstream + self.path, data=raw or None, method=self.command)
                req.add_header("content-type", "application/json")
                try:
                    with urllib.request.urlopen(req, timeout=60) as r:
                        self.reply(r.status, r.read())
                except urllib.error.HTTPError as e:
                    self.reply(e.code, e.read())

            do_GET = do_POST = do_PUT = do_HEAD = do_DELETE = _any

        super().__init__(Handler)

    def _bad(self, why: str) -> tuple[int, Any]:
        self.refused.append(why)
        return 400, {"error": {"type": "illegal_argument_exception", "reason": why}, "status": 400}

    def lifecycle(self, kind: str, method: str, path: str, query: dict[str, list[str]], body: Any) -> Any:
        if kind == "ilm" and method == "GET" and path == "/_component_template/collector-docker-settings":
            # a cluster with ILM that has not got our settings yet (the real engine behind may have
            # them from other tests, without the ILM setting): setup must send them
            return 404, {"error": {"type": "resource_not_found_exception", "reason": "not found"}, "status": 404}
        if kind == "ilm" and path.startswith("/_ilm/"):
            if method == "GET" and path == "/_ilm/policy":
                return 200, {k: {"version": v["version"], "policy": v["policy"]} for k, v in self.policies.items()}
            m = re.fullmatch(r"/_ilm/policy/([^/]+)", path)
            if m and method == "PUT":
                try:
                    jsonschema.validate(body, ILM_POLICY)
                except jsonschema.ValidationError as e:
                    return self._bad(f"[put_lifecycle] {e.message} at {list(e.absolute_path)}")
                old = self.policies.get(m.group(1))
                self.policies[m.group(1)] = {"policy": body["policy"], "version": old["version"] + 1 if old else 1}
                return 200, {"acknowledged": True}
            return self._bad(f"ILM: no {method} {path}")
        if kind == "ism" and path.startswith("/_plugins/_ism/"):
            if method == "GET" and path == "/_plugins/_ism/policies":
                listed = [self._ism_doc(k) for k in self.policies]
                return 200, {"policies": listed, "total_policies": len(listed)}
            m = re.fullmatch(r"/_plugins/_ism/policies/([^/]+)", path)
            if m and method == "GET":
                if m.group(1) not in self.policies:
                    return 404, {"error": {"type": "status_exception", "reason": "Policy not found"}, "status": 404}
                return 200, self._ism_doc(m.group(1))
            if m and method == "PUT":
                return self._ism_put(m.group(1), query, body)
            return self._bad(f"ISM: no {method} {path}")
        return None

    def _ism_doc(self, pid: str) -> dict[str, Any]:
        p = self.policies[pid]
        return {"_id": pid, "_version": p["version"], "_seq_no": p["seq_no"], "_primary_term": 1, "policy": p["stored"]}

    def _ism_put(self, pid: str, query: dict[str, list[str]], body: Any) -> tuple[int, Any]:
        try:
            jsonschema.validate(body, ISM_POLICY)
        except jsonschema.ValidationError as e:
            return self._bad(f"Invalid policy: {e.message} at {list(e.absolute_path)}")
        if problems := ism_policy_problems(body):
            return self._bad("; ".join(problems))
        old = self.policies.get(pid)
        seq = query.get("if_seq_no", [None])[0]
        term = query.get("if_primary_term", [None])[0]
        if old is not None and (seq is None or int(seq) != old["seq_no"] or int(term or -1) != 1):
            why = f"[{pid}]: version conflict, required seqNo [{seq}], primary term [{term}]"
            self.refused.append(why)
            return 409, {"error": {"type": "version_conflict_engine_exception", "reason": why}, "status": 409}
        if old is None and seq is not None:
            return self._bad("if_seq_no for a policy that does not exist")
        self.policies[pid] = {
            "policy": body["policy"],
            "stored": ism_stored(body["policy"], pid, int(time.time() * 1000)),
            "seq_no": (old["seq_no"] + 1) if old else 0,
            "version": (old["version"] + 1) if old else 1,
        }
        doc = self._ism_doc(pid)
        return (201 if old is None else 200), {**doc, "policy": {"policy": doc["policy"]}}

    def request(self, method: str, path: str) -> Any:
        """Ask the real engine behind."""
        with urllib.request.urlopen(urllib.request.Request(self.upstream + path, method=method), timeout=60) as r:
            return orjson.loads(r.read())

    def lifecycle_requests(self) -> list[tuple[str, str]]:
        return [(s.method, s.path) for s in self.seen if s.path.startswith(("/_ilm", "/_plugins/_ism"))]

    def put(self, path: str) -> Seen:
        (s,) = [s for s in self.seen if s.method == "PUT" and s.path == path]
        return s


@pytest.fixture
def ilm(es8: SearchEngine):
    e = LifecycleEngine(es8.url, "ilm")
    yield e
    e.close()


@pytest.fixture
def ism(search_engine_os2: SearchEngine):
    e = LifecycleEngine(search_engine_os2.url, "ism")
    yield e
    e.close()


@pytest.fixture(scope="session")
def search_engine_os2() -> SearchEngine:
    e = SearchEngine("os2", "")
    e.start()
    return e


def setup(engine: LifecycleEngine, *args: str) -> Any:
    r = run_cli("setup", "--hosts", engine.url, *args)
    assert not engine.refused, engine.refused
    assert r.returncode == 0, r.stdout + r.stderr
    return r


def test_ilm_setup_puts_the_documented_policy_and_names_it_in_the_settings(ilm, es8, tmp_path):
    ds = f"ilm{uuid.uuid4().hex[:8]}-app-default"
    r = setup(ilm, "--data-stream", ds, "--retention-days", "7")
    assert ilm.lifecycle_requests() == [("GET", "/_ilm/policy"), ("PUT", f"/_ilm/policy/{POLICY}")]
    policy = ilm.put(f"/_ilm/policy/{POLICY}").body["policy"]
    assert policy["phases"]["delete"] == {"min_age": "7d", "actions": {"delete": {}}}
    assert "rollover" in policy["phases"]["hot"]["actions"]  # a data stream rolls over by itself
    settings = ilm.put("/_component_template/collector-docker-settings").body["template"]["settings"]
    assert settings["index.lifecycle.name"] == POLICY
    assert f"lifecycle policy {POLICY}: delete after 7 days" in r.stdout
    prefix = ds.rsplit("-", 1)[0]
    t = es8.request("GET", f"/_index_template/{prefix}").body["index_templates"][0]["index_template"]
    assert "data_stream" in t and "collector-docker-settings" in t["composed_of"]


def test_ilm_setup_for_dated_indices_does_not_ask_for_a_rollover(ilm, tmp_path):
    """ILM's rollover needs ``index.lifecycle.rollover_alias`` on an index that is not a data
    stream, and setup sets none: a policy with rollover would fail on every dated index."""
    target = f"ilmidx{uuid.uuid4().hex[:8]}-%Y.%m.%d"
    setup(ilm, "--data-stream", target)
    policy = ilm.put(f"/_ilm/policy/{POLICY}").body["policy"]
    assert "rollover" not in policy["phases"].get("hot", {}).get("actions", {})
    assert policy["phases"]["delete"] == {"min_age": "30d", "actions": {"delete": {}}}


def test_ilm_dry_run_changes_nothing(ilm):
    r = setup(ilm, "--dry-run", "--retention-days", "3")
    assert ilm.lifecycle_requests() == [("GET", "/_ilm/policy")]
    assert [s for s in ilm.seen if s.method != "GET"] == []
    assert f"would PUT /_ilm/policy/{POLICY}" in r.stdout and '"min_age": "3d"' in r.stdout


def test_ism_setup_creates_then_keeps_then_updates_the_documented_policy(ism, tmp_path):
    ds = f"ism{uuid.uuid4().hex[:8]}-app-default"
    pattern = ds.rsplit("-", 1)[0] + "-*"
    r = setup(ism, "--data-stream", ds, "--retention-days", "7")
    assert ism.lifecycle_requests() == [
        ("GET", "/_ilm/policy"),  # (the real OpenSearch answers: no such API)
        ("GET", "/_plugins/_ism/policies"),
        ("GET", f"/_plugins/_ism/policies/{POLICY}"),
        ("PUT", f"/_plugins/_ism/policies/{POLICY}"),
    ]
    put = ism.put(f"/_plugins/_ism/policies/{POLICY}")
    assert put.query == {}  # a creation: no if_seq_no
    p = put.body["policy"]
    assert p["ism_template"] == [{"index_patterns": [pattern], "priority": 100}]
    states = {s["name"]: s for s in p["states"]}
    assert states[p["default_state"]]["transitions"] == [
        {"state_name": "delete", "conditions": {"min_index_age": "7d"}}
    ]
    assert states["delete"]["actions"] == [{"delete": {}}]
    assert f"ISM policy {POLICY}: delete after 7 days" in r.stdout
    installed = ism.request("GET", "/_component_template/collector-docker-settings")
    assert "lifecycle" not in orjson.dumps(installed).decode()  # ISM attaches by ism_template, not a setting

    ism.seen.clear()
    r = setup(ism, "--data-stream", ds, "--retention-days", "7")
    assert ("PUT", f"/_plugins/_ism/policies/{POLICY}") not in ism.lifecycle_requests()
    assert f"ISM policy {POLICY}: unchanged" in r.stdout

    ism.seen.clear()
    r = setup(ism, "--data-stream", ds, "--retention-days", "14")
    put = ism.put(f"/_plugins/_ism/policies/{POLICY}")
    assert put.query == {"if_seq_no": ["0"], "if_primary_term": ["1"]}  # ISM refuses an update without them
    assert {"state_name": "delete", "conditions": {"min_index_age": "14d"}} in [
        t for s in put.body["policy"]["states"] for t in s["transitions"]
    ]
    assert f"ISM policy {POLICY}: delete after 14 days (updated)" in r.stdout


def test_ism_setup_for_dated_indices_does_not_ask_for_a_rollover(ism, tmp_path):
    """ISM's rollover needs ``plugins.index_state_management.rollover_alias`` on an index that
    is not a data stream; setup sets none."""
    target = f"ismidx{uuid.uuid4().hex[:8]}-%Y.%m.%d"
    setup(ism, "--data-stream", target)
    p = ism.put(f"/_plugins/_ism/policies/{POLICY}").body["policy"]
    assert not [a for s in p["states"] for a in s["actions"] if "rollover" in a]
    assert p["ism_template"][0]["index_patterns"] == [target.split("%", maxsplit=1)[0] + "*"]


def test_ism_dry_run_says_what_it_would_send_and_changes_nothing(ism):
    r = setup(ism, "--dry-run", "--retention-days", "3")
    assert [s for s in ism.seen if s.method != "GET"] == []
    assert f"would PUT /_plugins/_ism/policies/{POLICY}" in r.stdout and '"min_index_age": "3d"' in r.stdout


# the requests of the APIs' own examples (Elasticsearch: "Create or update lifecycle policy";
# OpenSearch: "ISM API" create policy, and "Policy examples": ism_template as one object)
ILM_DOCS_EXAMPLE = {
    "policy": {
        "_meta": {"description": "used for nginx log", "project": {"name": "myProject", "department": "myDepartment"}},
        "phases": {
            "warm": {"min_age": "10d", "actions": {"forcemerge": {"max_num_segments": 1}}},
            "delete": {"min_age": "30d", "actions": {"delete": {}}},
        },
    }
}
ISM_DOCS_EXAMPLE = {
    "policy": {
        "description": "ingesting logs",
        "default_state": "ingest",
        "states": [
            {
                "name": "ingest",
                "actions": [{"rollover": {"min_doc_count": 5}}],
                "transitions": [{"state_name": "search"}],
            },
            {
                "name": "search",
                "actions": [],
                "transitions": [{"state_name": "delete", "conditions": {"min_index_age": "5m"}}],
            },
            {"name": "delete", "actions": [{"delete": {}}], "transitions": []},
        ],
    }
}
ISM_DOCS_TEMPLATE_EXAMPLE = {
    "policy": {
        "description": "Example rollover policy.",
        "default_state": "rollover",
        "states": [{"name": "rollover", "actions": [{"rollover": {"min_doc_count": 1}}], "transitions": []}],
        "ism_template": {"index_patterns": ["log*"], "priority": 100},
    }
}


def test_the_stand_in_takes_the_documented_examples_and_what_ism_gives_back():
    jsonschema.validate(ILM_DOCS_EXAMPLE, ILM_POLICY)
    for example in (ISM_DOCS_EXAMPLE, ISM_DOCS_TEMPLATE_EXAMPLE):
        jsonschema.validate(example, ISM_POLICY)
        assert ism_policy_problems(example) == []
        # what GET gives back can be PUT again (with its seq_no): Policy.parse reads its own output
        jsonschema.validate({"policy": ism_stored(example["policy"], "p", 1)}, ISM_POLICY)
    stored = ism_stored(ISM_DOCS_TEMPLATE_EXAMPLE["policy"], "p", 1)
    assert stored["states"][0]["actions"] == [
        {
            "retry": {"count": 3, "backoff": "exponential", "delay": "1m"},
            "rollover": {"min_doc_count": 1, "copy_alias": False},
        }
    ]
    assert stored["ism_template"] == [{"index_patterns": ["log*"], "priority": 100, "last_updated_time": 1}]


def test_the_stand_in_refuses_what_the_apis_refuse():
    """The schemas are not vacuous: shapes the documentation (and ISM's parser) refuse fail."""
    good_ilm = {"policy": {"phases": {"delete": {"min_age": "30d", "actions": {"delete": {}}}}}}
    jsonschema.validate(good_ilm, ILM_POLICY)
    for bad in (
        {"phases": {}},  # not under "policy"
        {"policy": {"phases": {"delete": {"min_age": "30 days", "actions": {"delete": {}}}}}},
        {"policy": {"phases": {"hot": {"actions": {"rollover": {}}}}}},  # rollover with no condition
        {"policy": {"phases": {"delete": {"actions": {"rollover": {"max_age": "1d"}}}}}},  # not a delete action
        {"policy": {"phases": {"hot": {"actions": {}}}, "retention": 3}},
    ):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, ILM_POLICY)
    good_ism = {
        "policy": {
            "description": "d",
            "default_state": "hot",
            "states": [
                {"name": "hot", "actions": [], "transitions": [{"state_name": "delete"}]},
                {"name": "delete", "actions": [{"delete": {}}], "transitions": []},
            ],
        }
    }
    jsonschema.validate(good_ism, ISM_POLICY)
    assert ism_policy_problems(good_ism) == []
    no_description = {"policy": {k: v for k, v in good_ism["policy"].items() if k != "description"}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(no_description, ISM_POLICY)
    wrong_default = orjson.loads(orjson.dumps(good_ism))
    wrong_default["policy"]["default_state"] = "warm"
    assert ism_policy_problems(wrong_default) == ["Policy must have a valid default state"]
    for bad_state in (
        {"name": "hot", "actions": [{"rollover": {"min_doc_count": 1}, "delete": {}}]},  # two operations in one
        {"name": "hot", "actions": [{"retry": {"count": 3}}]},  # no operation
        {"name": "hot", "actions": [{"rollover": {"max_age": "1d"}}]},  # an ILM condition
        {"name": "hot", "transitions": [{"state_name": "delete", "conditions": {}}]},  # no condition
        {
            "name": "hot",
            "transitions": [{"state_name": "delete", "conditions": {"min_index_age": "1d", "min_doc_count": 1}}],
        },
    ):
        bad = orjson.loads(orjson.dumps(good_ism))
        bad["policy"]["states"][0] = bad_state
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, ISM_POLICY)
    leaves_delete = orjson.loads(orjson.dumps(good_ism))
    leaves_delete["policy"]["states"][1]["transitions"] = [{"state_name": "hot"}]
    assert ism_policy_problems(leaves_delete) == ["State=delete cannot contain transitions if using delete action"]
