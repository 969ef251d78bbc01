from __future__ import annotations

import textwrap

import pytest

from collector.config import ConfigError, PipelineConfig, parse_config

GOOD = """\
data_dir: /tmp/x
sources:
  containers: {type: docker_json_file, paths: ["/var/lib/docker/containers/*/*-json.log"]}
transforms:
  meta: {type: docker_metadata, inputs: [containers]}
sinks:
  out: {type: file, inputs: [meta], path: /tmp/out.ndjson}
"""


def test_the_documented_shape_is_valid():
    cfg = parse_config(GOOD)
    assert cfg.sinks["out"].path == "/tmp/out.ndjson"
    assert cfg.transforms["meta"].inputs == ["containers"]


def errors(text: str) -> str:
    with pytest.raises(ConfigError) as e:
        parse_config(textwrap.dedent(text), "p.yaml")
    return str(e.value)


def test_unknown_keys_name_the_key_and_the_line():
    msg = errors(GOOD.replace("path: /tmp/out.ndjson}", "path: /tmp/out.ndjson, pathh: 1}"))
    assert msg == "p.yaml:7: unknown key 'pathh' in sinks.out"
    msg = errors(GOOD + "colour: red\n")
    assert msg == "p.yaml:8: unknown key 'colour'"


def test_unknown_keys_in_block_style_point_at_their_own_line():
    msg = errors("""\
        sources:
          c:
            type: docker_json_file
            pahts: [x]
        sinks:
          out: {type: console, inputs: [c]}
        """)
    assert msg == "p.yaml:4: unknown key 'pahts' in sources.c"


def test_unknown_type_lists_the_known_ones():
    msg = errors(GOOD.replace("type: file", "type: fiel"))
    assert "p.yaml:7: sinks.out: unknown type 'fiel'" in msg and "'console'" in msg


def test_dangling_inputs_and_cycles_are_errors():
    assert "input 'nope' is not a source or transform" in errors(GOOD.replace("inputs: [meta]", "inputs: [nope]"))
    cyc = GOOD.replace("inputs: [containers]", "inputs: [containers, f]") + ("  \n")
    cyc = cyc.replace("transforms:\n", "transforms:\n  f: {type: filter, inputs: [meta]}\n")
    assert "cycle" in errors(cyc)


def test_wrong_types_and_bad_values_say_where():
    msg = errors(GOOD.replace("paths: [", "max_record_bytes: lots, paths: ["))
    assert msg.startswith("p.yaml:3: sources.containers.max_record_bytes:")
    msg = errors(GOOD.replace("inputs: [containers]}", "inputs: [containers], tag: '{{.Nmae}}'}"))
    assert "p.yaml:5" in msg and "{{.Nmae}}" in msg


def test_environment_variables_are_substituted(monkeypatch):
    monkeypatch.setenv("COLLECTOR_OUT_FILE", "/tmp/env.ndjson")
    cfg = parse_config(GOOD.replace("/tmp/out.ndjson", "'${COLLECTOR_OUT_FILE}'"))
    assert cfg.sinks["out"].path == "/tmp/env.ndjson"
    cfg = parse_config(GOOD.replace("/tmp/out.ndjson", "'${NOT_SET_ANYWHERE:-/tmp/d.ndjson}'"))
    assert cfg.sinks["out"].path == "/tmp/d.ndjson"
    assert "p.yaml:7: sinks.out.path: environment variable NOT_SET_ANYWHERE is not set" in errors(
        GOOD.replace("/tmp/out.ndjson", "'${NOT_SET_ANYWHERE}'")
    )
    monkeypatch.setenv("MAX_BYTES", "4096")
    cfg = parse_config(GOOD.replace("paths: [", "max_record_bytes: '${MAX_BYTES}', paths: [") + "# ${IN_A_COMMENT}\n")
    assert cfg.sources["containers"].max_record_bytes == 4096  # still checked as a number; comments untouched


def test_an_old_variable_name_still_works_and_says_its_new_one(monkeypatch, caplog):
    """The shipped pipelines read ES_URL, OUT_FILE ... before they read COLLECTOR_*: a deployment
    that still sets the old name gets its value and a warning, not a silent default."""
    monkeypatch.delenv("COLLECTOR_OUT_FILE", raising=False)
    monkeypatch.setenv("OUT_FILE", "/tmp/old-name.ndjson")
    cfg = parse_config(GOOD.replace("/tmp/out.ndjson", "'${COLLECTOR_OUT_FILE:-/tmp/default.ndjson}'"))
    assert cfg.sinks["out"].path == "/tmp/old-name.ndjson"
    assert "COLLECTOR_OUT_FILE is not set but OUT_FILE is" in caplog.text
    monkeypatch.setenv("COLLECTOR_OUT_FILE", "/tmp/new-name.ndjson")  # the new name wins
    cfg = parse_config(GOOD.replace("/tmp/out.ndjson", "'${COLLECTOR_OUT_FILE:-/tmp/default.ndjson}'"))
    assert cfg.sinks["out"].path == "/tmp/new-name.ndjson"
    monkeypatch.setenv("MAX_BYTES", "4096")  # only the renamed ones: COLLECTOR_MAX_BYTES never existed
    monkeypatch.delenv("COLLECTOR_MAX_BYTES", raising=False)
    cfg = parse_config(GOOD.replace("paths: [", "max_record_bytes: '${COLLECTOR_MAX_BYTES:-8192}', paths: ["))
    assert cfg.sources["containers"].max_record_bytes == 8192


def test_yaml_syntax_errors_have_a_line():
    assert errors("sources:\n  a: [\n").startswith("p.yaml:")


def test_every_problem_of_a_file_is_reported_each_with_its_line_and_key():
    """Issue 17: `validate` stopped at the first error (graph errors, unset variables and
    duplicate keys each hid the rest)."""
    msg = errors("""\
        sources:
          c:
            type: docker_json_file
            pahts: [x]
            max_record_bytes: lots
        transforms:
          meta: {type: docker_metadata, inputs: [c, nowhere]}
          loop1: {type: filter, inputs: [loop2]}
          loop2: {type: filter, inputs: [loop1]}
        sinks:
          out: {type: file, inputs: [meta], path: "${NOT_SET_ANYWHERE}"}
          es: {type: elasticsearch, inputs: [ghost], hosts: [http://x:9200], batch: {max_events: -1}}
          out: {type: console, inputs: [meta]}
        api: {listen: nowhere}
        """)
    assert msg.splitlines() == [
        "p.yaml:4: unknown key 'pahts' in sources.c",
        "p.yaml:5: sources.c.max_record_bytes: Input should be a valid integer, unable to parse string as an integer",
        "p.yaml:7: transforms.meta.inputs: transform 'meta': input 'nowhere' is not a source or transform "
        "(known: c, loop1, loop2, meta)",
        "p.yaml:8: transforms.loop1.inputs: transforms form a cycle: loop1 -> loop2 -> loop1",
        "p.yaml:11: sinks.out.path: environment variable NOT_SET_ANYWHERE is not set "
        "(use ${NOT_SET_ANYWHERE:-default})",
        "p.yaml:12: sinks.es.inputs: sink 'es': input 'ghost' is not a source or transform "
        "(known: c, loop1, loop2, meta)",
        "p.yaml:12: sinks.es.batch.max_events: Input should be greater than or equal to 1",
        "p.yaml:13: sinks.out: duplicate key 'out' (first at line 11)",
        "p.yaml:14: api.listen: 'nowhere': listen on tcp://HOST:PORT",
    ]


def test_graph_problems_are_found_without_the_yaml_too():
    with pytest.raises(ValueError, match="input 'nope' is not a source or transform"):
        PipelineConfig.model_validate(
            {"sources": {"a": {"type": "fluent_forward"}}, "sinks": {"o": {"type": "console", "inputs": ["nope"]}}}
        )
