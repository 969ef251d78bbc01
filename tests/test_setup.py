"""`collector setup -c pipeline.yaml` (issue 17: setup could not read a pipeline file, so its
engine, credentials and data stream had to be said twice, once as flags)."""

from __future__ import annotations

import uuid

from tests.helpers import run_cli


def test_setup_prepares_what_each_elasticsearch_sink_of_a_pipeline_writes_to(es8, tmp_path):
    prefix = f"setupc{uuid.uuid4().hex[:8]}"
    cfg = tmp_path / "p.yaml"
    cfg.write_text(
        "sources: {f: {type: fluent_forward}}\n"
        "sinks:\n"
        "  es: {type: elasticsearch, inputs: [f], hosts: ['${TEST_ES_URL}'], data_stream: "
        f"{prefix}-app-default}}\n"
        "  also: {type: console, inputs: [f]}\n"
    )
    env = {"TEST_ES_URL": es8.url}
    r = run_cli("setup", "-c", str(cfg), "--dry-run", env=env)
    assert r.returncode == 0, r.stderr
    assert f"would PUT /_index_template/{prefix}-app" in r.stdout
    assert es8.request("GET", f"/_index_template/{prefix}-app").status == 404  # a dry run changes nothing
    r = run_cli("setup", "-c", str(cfg), env=env)
    assert r.returncode == 0, r.stderr
    t = es8.request("GET", f"/_index_template/{prefix}-app").body["index_templates"][0]["index_template"]
    assert t["index_patterns"] == [f"{prefix}-app-*"] and "data_stream" in t


def test_setup_of_a_pipeline_without_elasticsearch_is_a_configuration_error(tmp_path):
    cfg = tmp_path / "p.yaml"
    cfg.write_text("sources: {f: {type: fluent_forward}}\nsinks: {o: {type: console, inputs: [f]}}\n")
    r = run_cli("setup", "-c", str(cfg))
    assert r.returncode == 2 and "no elasticsearch sink" in r.stderr, r.stderr
    r = run_cli("setup", "-c", str(cfg), "--hosts", "http://127.0.0.1:9")
    assert r.returncode == 2 and "not allowed with argument" in r.stderr, r.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("sources: {f: {type: fluent_forward, bogus: 1}}\nsinks: {o: {type: console, inputs: [f]}}\n")
    r = run_cli("setup", "-c", str(bad))
    assert r.returncode == 2 and f"{bad}:1: unknown key 'bogus' in sources.f" in r.stderr, r.stderr
