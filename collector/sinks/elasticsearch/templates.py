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

import re
from typing import Any

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
                            "severity": {"properties": {"code": {"type": "long"}, "name": {"type": "keyword"}}}
                        }
                    },
                }
            },
            "event": {"properties": {"original": {"type": "keyword", "index": False, "doc_values": False}}},
            "error": {"properties": {"type": {"type": "keyword"}, "message": {"type": "text"}}},
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


def ilm_policy(retention_days: int) -> dict[str, Any]:
    return {
        "policy": {
            "_meta": {"managed_by": "collector"},
            "phases": {
                "hot": {"actions": {"rollover": {"max_primary_shard_size": "50gb", "max_age": "1d"}}},
                "delete": {"min_age": f"{retention_days}d", "actions": {"delete": {}}},
            },
        }
    }


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
