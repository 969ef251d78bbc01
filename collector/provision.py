"""``collector setup``: install what the Elasticsearch sink needs, and the Kibana dashboards.

    collector setup --hosts http://127.0.0.1:9200 [--kibana http://127.0.0.1:5601] [--dry-run]
    collector setup -c pipeline.yaml [--kibana ...]     # what each elasticsearch sink writes to

Installs, idempotently (a second run changes nothing and says so):
1. a lifecycle policy, when the cluster has ILM (Elasticsearch with x-pack) or ISM (OpenSearch
   with the plugin), and says plainly when it has neither;
2. the component templates (settings, mappings) and the index template for the data stream;
3. with ``--kibana``, the saved objects in ``dashboards/`` (data view, saved search, dashboard)
   through Kibana's saved objects import API (overwrite, ``kbn-xsrf``).
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import urllib3

from collector.sinks.elasticsearch.client import (
    EngineClient,
    EngineUnavailableError,
    Response,
    auth_headers,
    refusal,
)
from collector.sinks.elasticsearch.config import AuthConfig, TlsConfig
from collector.sinks.elasticsearch.templates import ensure, ilm_policy, plan

POLICY = "collector-logs"


def lifecycle_support(client: EngineClient) -> str | None:
    """``ilm``, ``ism`` or None."""
    r = client.request("GET", "/_ilm/policy")
    if r.status == 200:
        return "ilm"
    r = client.request("GET", "/_plugins/_ism/policies")
    if r.status == 200:
        return "ism"
    return None


def ism_policy(retention_days: int, pattern: str, rollover: bool = True) -> dict[str, Any]:
    """Delete after ``retention_days``; a data stream also rolls over daily (``rollover=False`` for
    dated indices: ISM's rollover needs ``plugins.index_state_management.rollover_alias`` on an
    index that is not a data stream, and there is none)."""
    return {
        "policy": {
            "description": "collector: delete Docker logs after the retention period",
            "default_state": "hot",
            "states": [
                {
                    "name": "hot",
                    "actions": [{"rollover": {"min_index_age": "1d"}}] if rollover else [],
                    "transitions": [{"state_name": "delete", "conditions": {"min_index_age": f"{retention_days}d"}}],
                },
                {"name": "delete", "actions": [{"delete": {}}], "transitions": []},
            ],
            "ism_template": [{"index_patterns": [pattern], "priority": 100}],
        }
    }


def _covers(installed: Any, wanted: Any) -> bool:
    """``installed`` (the policy as ISM's GET returns it) says everything ``wanted`` says. ISM
    adds to what it was sent (``policy_id``, ``last_updated_time``, a default ``retry`` in each
    action, ``copy_alias`` in a rollover, ``last_updated_time`` in each ``ism_template``): extra
    keys are not a difference, a missing or different value is."""
    if isinstance(wanted, dict):
        return isinstance(installed, dict) and all(
            k in installed and _covers(installed[k], v) for k, v in wanted.items()
        )
    if isinstance(wanted, list):
        return (
            isinstance(installed, list)
            and len(installed) == len(wanted)
            and all(_covers(i, w) for i, w in zip(installed, wanted, strict=True))
        )
    return bool(installed == wanted)


def dashboards_dir() -> Path | None:
    here = Path(__file__).resolve().parent
    for d in (
        os.environ.get("COLLECTOR_DASHBOARDS"),
        here.parent / "dashboards",
        Path(sys.prefix) / "share" / "collector" / "dashboards",
        Path("/usr/share/collector/dashboards"),
    ):
        if d and Path(d).is_dir() and any(Path(d).glob("*.ndjson")):
            return Path(d)
    return None


def import_dashboards(
    kibana: str, files: list[Path], headers: dict[str, str], verify: bool, ca_file: str | None
) -> list[str]:
    """POST each file to Kibana's saved objects import API; returns one line per file."""
    http = urllib3.PoolManager(cert_reqs="CERT_REQUIRED" if verify else "CERT_NONE", ca_certs=ca_file)
    out = []
    for f in files:
        body, ctype = urllib3.encode_multipart_formdata({"file": (f.name, f.read_bytes(), "application/ndjson")})
        url = kibana.rstrip("/") + "/api/saved_objects/_import?overwrite=true"
        try:
            r = http.request(
                "POST",
                url,
                body=body,
                headers={**headers, "kbn-xsrf": "true", "content-type": ctype},
                timeout=60,
                retries=False,
            )
        except urllib3.exceptions.HTTPError as e:
            raise SystemExit(f"collector setup: cannot reach Kibana at {kibana}: {e}") from None
        try:
            answer = orjson.loads(r.data)
        except orjson.JSONDecodeError:
            answer = {}
        if r.status != 200 or not answer.get("success"):
            errors = answer.get("errors") or answer.get("message") or r.data[:300].decode("utf-8", "replace")
            raise SystemExit(f"collector setup: Kibana refused {f.name} (HTTP {r.status}): {errors}")
        out.append(f"imported {f.name}: {answer.get('successCount', 0)} saved object(s) (overwrite)")
    return out


@dataclass(frozen=True)
class Target:
    """One engine and one data stream (or dated index pattern) to prepare."""

    hosts: list[str]
    auth: AuthConfig
    tls: TlsConfig
    target: str
    index_mode: bool


def targets(args: argparse.Namespace) -> list[Target]:
    """From ``-c pipeline.yaml`` (each elasticsearch sink: its hosts, credentials, TLS and target,
    exactly what it will write to), or from ``--hosts`` and the flags."""
    if getattr(args, "config", None):
        from collector.config import ConfigError, load_config  # noqa: PLC0415

        cfg = load_config(args.config)
        out: dict[tuple[tuple[str, ...], str], Target] = {}
        for sink in cfg.sinks.values():
            if sink.type == "elasticsearch":
                t = Target(list(sink.hosts), sink.auth, sink.tls, sink.target(), sink.mode == "index")
                out.setdefault((tuple(t.hosts), t.target), t)
        if not out:
            raise ConfigError([f"{args.config}: no elasticsearch sink, so nothing to set up"])
        return list(out.values())
    auth = AuthConfig(user=args.user, password=args.password, api_key=args.api_key)
    tls = TlsConfig(ca_file=args.ca_file, verify=args.verify)
    return [Target(list(args.hosts), auth, tls, args.data_stream, "%" in args.data_stream)]


def run_setup(args: argparse.Namespace) -> int:
    found = targets(args)
    for t in found:
        rc = setup_engine(t, args)
        if rc:
            return rc
    if args.kibana:
        d = dashboards_dir()
        if d is None:
            print(
                "collector setup: no dashboards found (set COLLECTOR_DASHBOARDS to the dashboards/ folder)",
                file=sys.stderr,
            )
            return 1
        files = sorted(d.glob("*.ndjson"))
        if args.dry_run:
            for f in files:
                print(f"would POST {args.kibana.rstrip('/')}/api/saved_objects/_import?overwrite=true  file={f}")
        else:
            auth, tls = found[0].auth, found[0].tls
            for line in import_dashboards(args.kibana, files, auth_headers(auth), tls.verify, tls.ca_file):
                print(line)
    return 0


def setup_engine(t: Target, args: argparse.Namespace) -> int:
    client = EngineClient(t.hosts, t.auth, t.tls, timeout=30)
    try:
        info = client.info()
        lifecycle = lifecycle_support(client)
        policy = POLICY if lifecycle == "ilm" else None
        steps = plan(t.target, args.replicas, policy, t.index_mode)
        print(f"{client.hosts[0]}: {info}")
        if lifecycle is None:
            print(
                f"lifecycle: {info} has neither ILM nor ISM: data is kept until you delete it "
                "(install x-pack/ISM, or delete old backing indices yourself)"
            )
        rollover = not t.index_mode
        ilm_body = ilm_policy(args.retention_days, rollover)
        ism_body = ism_policy(args.retention_days, steps[-1].body["index_patterns"][0], rollover)
        ism_path = f"/_plugins/_ism/policies/{POLICY}"
        if args.dry_run:
            if lifecycle == "ilm":
                print(f"would PUT /_ilm/policy/{POLICY}\n{_pretty(ilm_body)}")
            elif lifecycle == "ism":
                print(f"would PUT {ism_path}\n{_pretty(ism_body)}")
            for s in steps:
                print(f"would {s.method} {s.path}\n{_pretty(s.body)}")
        else:
            if lifecycle == "ilm":
                _apply(client, "PUT", f"/_ilm/policy/{POLICY}", ilm_body)
                print(f"lifecycle policy {POLICY}: delete after {args.retention_days} days")
            elif lifecycle == "ism":
                r = client.request("GET", ism_path)
                if r.status == 404:
                    _apply(client, "PUT", ism_path, ism_body)
                    print(f"ISM policy {POLICY}: delete after {args.retention_days} days")
                elif r.status != 200:
                    raise EngineUnavailableError(r.host, f"GET {ism_path}: {refusal(r)}")
                elif _covers(r.body.get("policy"), ism_body["policy"]):
                    print(f"ISM policy {POLICY}: unchanged")
                else:  # ISM updates a policy only for the version it was read at
                    seq, term = r.body.get("_seq_no"), r.body.get("_primary_term")
                    _apply(client, "PUT", f"{ism_path}?if_seq_no={seq}&if_primary_term={term}", ism_body)
                    print(f"ISM policy {POLICY}: delete after {args.retention_days} days (updated)")
            for what, outcome in ensure(client, t.target, not t.index_mode, args.replicas, policy):
                print(f"{what}: {outcome}")
    except EngineUnavailableError as e:
        print(f"collector setup: {e}", file=sys.stderr)
        return 1
    finally:
        client.close()
    return 0


def _apply(client: EngineClient, method: str, path: str, body: dict[str, Any]) -> Response:
    r = client.request(method, path, body)
    if r.status >= 300:
        raise EngineUnavailableError(r.host, f"{method} {path}: {refusal(r)}")
    return r


def _pretty(body: dict[str, Any]) -> str:
    return orjson.dumps(body, option=orjson.OPT_INDENT_2).decode()
