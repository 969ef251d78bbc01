"""What ``collector setup`` installs (and the sink installs when missing): templates and mappings.

One composable index template per target, built from two component templates:

* ``collector-docker-mappings``: a mapping for every field the sources emit (``@timestamp`` as
  ``date_nanos``: Docker's timestamps have nanoseconds), container labels as keywords under
  ``container.labels`` (their dots are already ``_``, so ``com.docker`` and
  ``com.docker.compose.project`` cannot conflict), other strings as keywords;
* ``collector-docker-settings``: replicas (only when asked) and the lifecycle policy when the
  cluster has ILM.

The template's ``_meta.version`` says which collector layout it carries, so setup can tell
"unchanged" from "outdated".
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

import orjson

from collector.sinks.elasticsearch.client import EngineClient, EngineUnavailableError, refusal

TEMPLATE_VERSION = 1
MAPPINGS_COMPONENT = "collector-docker-mappings"
SETTINGS_COMPONENT = "collector-docker-settings"
PRIORITY = 250  # above Elasticsearch's built-in logs-*-* template (100)

KW = {"type": "keyword", "ignore_above": 1024}


def mappings() -> dict[str, Any]:
    """The mapping of every field a record can carry."""
    return {
        "dynamic_templates": [
            {"labels": {"path_match": "container.labels.*", "mapping": KW}},
            {"docker_attrs": {"path_match": "docker.attrs.*", "mapping": KW}},
            {"syslog_sd": {"path_match": "log.syslog.structured_data.*", "mapping": KW}},
            {"journald_custom": {"path_match": "journald.custom.*", "mapping": KW}},
            {"strings_as_keyword": {"match_mapping_type": "string", "mapping": KW}},
        ],
        "properties": {
            "@timestamp": {"type": "date_nanos"},
            "message": {"type": "text"},
            "stream": {"type": "keyword"},
            "tags": {"type": "keyword"},
            "host": {"properties": {"name": {"type": "keyword"}}},
            "container": {
                "properties": {
                    "id": {"type": "keyword"},
                    "name": {"type": "keyword"},
                    "image": {"properties": {"name": {"type": "keyword"}, "tag": {"type": "keyword"}}},
                    "labels": {"type": "object", "dynamic": True},
                    "compose": {"properties": {"project": {"type": "keyword"}, "service": {"type": "keyword"}}},
                }
            },
            "log": {
                "properties": {
                    "file": {"properties": {"path": {"type": "keyword"}}},
                    "offset": {"type": "long"},
                    "flags": {"type": "keyword"},
                    "level": {"type": "keyword"},
                    "syslog": {
                        "properties": {
                            "severity": {"properties": {"code": {"type": "long"}, "name": {"type": "keyword"}}},
                            "facility": {"properties": {"code": {"type": "long"}, "name": {"type": "keyword"}}},
                            "priority": {"type": "long"},
                            "appname": {"type": "keyword"},
                            "procid": {"type": "keyword"},
                            "msgid": {"type": "keyword"},
                            "version": {"type": "keyword"},
                            "structured_data": {"type": "object", "dynamic": True},
                        }
                    },
                }
            },
            "event": {"properties": {"original": {"type": "keyword", "index": False, "doc_values": False}}},
            "error": {"properties": {"type": {"type": "keyword"}, "message": {"type": "text"}}},
            "gelf": {"properties": {"full_message": {"type": "text"}}},
        },
    }


def settings(replicas: int | None, ilm_policy: str | None) -> dict[str, Any]:
    s: dict[str, Any] = {}
    if replicas is not None:
        s["number_of_replicas"] = replicas
    if ilm_policy:
        s["index.lifecycle.name"] = ilm_policy
    return s


def template_name(target: str) -> str:
    """``logs-docker-default`` -> ``logs-docker``; ``logs-docker-%Y.%m.%d`` -> ``logs-docker``."""
    prefix = index_pattern(target).rstrip("*").rstrip("-._")
    return prefix or "collector"


def index_pattern(target: str) -> str:
    """The pattern that covers every name the sink can write: ``logs-docker-default`` -> ``logs-docker-*``."""
    static = re.split(r"\{\{|%", target, maxsplit=1)[0]
    if static == target:  # a fixed name: cover its siblings (other namespaces)
        static = target.rsplit("-", 1)[0] + "-" if "-" in target else target
    return static + "*"


def index_template(target: str, data_stream: bool) -> dict[str, Any]:
    body: dict[str, Any] = {
        "index_patterns": [index_pattern(target)],
        "priority": PRIORITY,
        "composed_of": [SETTINGS_COMPONENT, MAPPINGS_COMPONENT],
        "_meta": {"managed_by": "collector", "version": TEMPLATE_VERSION},
    }
    if data_stream:
        body["data_stream"] = {}
    return body


def component_templates(replicas: int | None, ilm_policy: str | None) -> dict[str, dict[str, Any]]:
    meta = {"managed_by": "collector", "version": TEMPLATE_VERSION}
    return {
        SETTINGS_COMPONENT: {"template": {"settings": settings(replicas, ilm_policy)}, "_meta": meta},
        MAPPINGS_COMPONENT: {"template": {"mappings": mappings()}, "_meta": meta},
    }


def ilm_policy(retention_days: int, rollover: bool = True) -> dict[str, Any]:
    """Delete after ``retention_days``; a data stream also rolls over daily (``rollover=False`` for
    dated indices: ILM's rollover needs ``index.lifecycle.rollover_alias`` on an index that is not
    a data stream, and there is none)."""
    phases: dict[str, Any] = {"delete": {"min_age": f"{retention_days}d", "actions": {"delete": {}}}}
    if rollover:
        phases = {"hot": {"actions": {"rollover": {"max_primary_shard_size": "50gb", "max_age": "1d"}}}, **phases}
    return {"policy": {"_meta": {"managed_by": "collector"}, "phases": phases}}


def mapped_fields() -> set[str]:
    """Every dotted field name with an explicit mapping (dashboards must only use these)."""
    out: set[str] = set()

    def walk(props: dict[str, Any], prefix: str) -> None:
        for k, v in props.items():
            name = prefix + k
            if "properties" in v:
                walk(v["properties"], name + ".")
            if "type" in v and v["type"] != "object":
                out.add(name)

    walk(mappings()["properties"], "")
    return out


# -- installing, shared by `collector setup` and the sink -------------------------------------
@dataclass
class Step:
    what: str
    method: str
    path: str
    body: dict[str, Any]
    get_path: str  # where the installed version is read
    extract: str  # key of the list in the GET answer ("" when the answer is the object)


def checksum(body: dict[str, Any]) -> str:
    return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]


def with_checksum(body: dict[str, Any]) -> dict[str, Any]:
    meta = dict(body.get("_meta") or {})
    meta["checksum"] = checksum(body)
    return {**body, "_meta": meta}


def plan(data_stream: str, replicas: int | None, policy: str | None, index_mode: bool = False) -> list[Step]:
    steps = []
    for name, body in component_templates(replicas, policy).items():
        steps.append(
            Step(
                f"component template {name}",
                "PUT",
                f"/_component_template/{name}",
                with_checksum(body),
                f"/_component_template/{name}",
                "component_templates",
            )
        )
    tname = template_name(data_stream)
    body = with_checksum(index_template(data_stream, data_stream=not index_mode))
    steps.append(
        Step(
            f"index template {tname} ({body['index_patterns'][0]})",
            "PUT",
            f"/_index_template/{tname}",
            body,
            f"/_index_template/{tname}",
            "index_templates",
        )
    )
    return steps


def installed_checksum(client: EngineClient, step: Step) -> str | None:
    r = client.request("GET", step.get_path)
    if r.status == 404:
        return None
    if r.status != 200:
        raise EngineUnavailableError(r.host, refusal(r))
    items = r.body.get(step.extract) or []
    if not items:
        return None
    obj = items[0].get(step.extract.removesuffix("s")) or {}  # component_templates -> component_template
    return (obj.get("_meta") or {}).get("checksum")


def ensure(
    client: EngineClient,
    target: str,
    data_stream: bool,
    replicas: int | None = None,
    policy: str | None = None,
    settings: str = "replace",
) -> list[tuple[str, str]]:
    """Install what is missing or outdated; returns (what, "installed" | "updated" | "unchanged").

    ``settings="create-only"`` (the sink) never overwrites settings someone installed with
    ``collector setup`` (replicas, lifecycle); mappings and the index template are kept current.
    """
    out = []
    for step in plan(target, replicas, policy, index_mode=not data_stream):
        have = installed_checksum(client, step)
        if have == step.body["_meta"]["checksum"]:
            out.append((step.what, "unchanged"))
            continue
        if have is not None and settings == "create-only" and step.path.endswith(SETTINGS_COMPONENT):
            out.append((step.what, "kept"))
            continue
        r = client.request(step.method, step.path, step.body)
        if r.status >= 300:
            raise EngineUnavailableError(r.host, f"{step.method} {step.path}: {refusal(r)}")
        out.append((step.what, "installed" if have is None else "updated"))
    return out
