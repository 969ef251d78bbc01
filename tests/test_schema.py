"""The generated reference: the JSON Schema (`collector schema`) and docs/configuration.md.

CI fails when the committed copies are out of date, when a pipeline in pipelines/ does not
validate against the schema (a real JSON Schema validator, as editors use), and when a field
has no description to generate the reference from.
"""

from __future__ import annotations

import copy
import json
import os
import typing
from pathlib import Path

import jsonschema
import pytest
import yaml
from pydantic import BaseModel

from collector import schema
from collector.config import PipelineConfig, expand_env
from tests.helpers import REPO, run_cli
from tests.test_pipelines import CONFIG_VARS, collector_configs

CONFIGS = collector_configs()
VALIDATOR = jsonschema.Draft202012Validator(schema.json_schema())


def test_the_schema_is_a_valid_draft_2020_12_schema():
    jsonschema.Draft202012Validator.check_schema(schema.json_schema())


def test_the_committed_schema_and_reference_are_current():
    stale = schema.stale(REPO / "docs")
    assert not stale, (
        f"out of date: {', '.join(stale)}; regenerate them with `collector schema --write docs` and commit them"
    )


def test_collector_schema_prints_them():
    r = run_cli("schema")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == json.loads((REPO / "docs" / "collector.schema.json").read_text())
    r = run_cli("schema", "--format", "markdown")
    assert r.stdout == (REPO / "docs" / "configuration.md").read_text()


def _errors(doc: object) -> list[str]:
    """Every error, with those of each branch of a ``oneOf`` (the component unions) flattened."""
    out: list[str] = []

    def add(e: jsonschema.ValidationError) -> None:
        out.append(f"{'.'.join(map(str, e.absolute_path))}: {e.message}")
        for sub in e.context or ():
            add(sub)

    for e in VALIDATOR.iter_errors(doc):
        add(e)
    return out


def _expanded(doc: object) -> object:
    """What the loader checks: ``${VAR:-default}`` with the variables unset (each file's defaults)."""
    if isinstance(doc, dict):
        return {k: _expanded(v) for k, v in doc.items()}
    if isinstance(doc, list):
        return [_expanded(v) for v in doc]
    if isinstance(doc, str) and "$" in doc:
        value = expand_env(doc, "")
        try:  # the loader checks "${N:-5}" as a number: so does pydantic's lax mode, not JSON Schema
            return yaml.safe_load(value) if value and not isinstance(yaml.safe_load(value), (dict, list)) else value
        except yaml.YAMLError:
            return value
    return doc


@pytest.mark.parametrize("path", CONFIGS, ids=[str(p.relative_to(REPO)) for p in CONFIGS])
def test_every_pipeline_validates_against_the_schema(path, monkeypatch):
    for var in CONFIG_VARS:
        monkeypatch.delenv(var, raising=False)
    doc = yaml.safe_load(path.read_text())
    assert not _errors(doc), f"{path.relative_to(REPO)} as an editor sees it (with ${{VAR}}): {_errors(doc)}"
    assert not _errors(_expanded(doc)), f"{path.relative_to(REPO)} with its defaults: {_errors(_expanded(doc))}"


def test_pipelines_name_the_schema_for_editors():
    for path in sorted(REPO.glob("pipelines/*.yaml")):
        first = path.read_text().splitlines()[0]
        assert first == "# yaml-language-server: $schema=../docs/collector.schema.json", path


def test_the_schema_has_teeth():
    """What the loader refuses, the schema refuses too (so an editor underlines it)."""
    good = yaml.safe_load((REPO / "pipelines" / "json-file-to-elasticsearch.yaml").read_text())
    assert not _errors(good)
    for change, expect in (
        (lambda d: d["sinks"]["elasticsearch"].update(data_streem="x"), "data_streem"),
        (lambda d: d["sources"]["containers"].update(type="docker_json_fiel"), "containers"),
        (lambda d: d["sinks"]["elasticsearch"]["buffer"].update(max_events="many"), "max_events"),
        (lambda d: d["sinks"]["elasticsearch"]["buffer"].update(when_full="explode"), "when_full"),
        (lambda d: d.update(colour="red"), "colour"),
        (lambda d: d["sinks"]["elasticsearch"].pop("inputs"), "inputs"),
    ):
        doc = copy.deepcopy(good)
        change(doc)
        errors = _errors(doc)
        assert errors and any(expect in e for e in errors), (expect, errors)
    # ${VAR} is accepted where the loader accepts it: a number, a choice
    doc = copy.deepcopy(good)
    doc["sinks"]["elasticsearch"]["buffer"].update(max_events="${MAX:-500}", when_full="${FULL:-block}")
    assert not _errors(doc)


def _models() -> list[type[BaseModel]]:
    seen: list[type[BaseModel]] = []

    def visit(ann: object) -> None:
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            if ann not in seen:
                seen.append(ann)
                for f in ann.model_fields.values():
                    visit(f.annotation)
            return
        for a in typing.get_args(ann):
            visit(a)

    visit(PipelineConfig)
    return seen


def test_every_field_is_described():
    """The reference is generated from the descriptions (DESIGN.md: every field described)."""
    missing = [
        f"{m.__module__}.{m.__qualname__}.{name}"
        for m in _models()
        for name, f in m.model_fields.items()
        if name != "type" and not (f.description or "").strip()
    ]
    assert not missing, f"fields without a description: {missing}"


def test_the_reference_documents_every_component_and_key():
    text = (REPO / "docs" / "configuration.md").read_text()
    for plural, kind, table in schema.KINDS:
        for type_ in table:
            assert f"### {kind} `{type_}`" in text, (plural, type_)
    for key in ("data_dir", "buffer.when_full", "tls.ca_file", "retry.max_backoff", "batch.max_events"):
        assert f"| `{key}` |" in text, key


def test_an_editor_line_for_a_copied_pipeline_is_shown_in_the_readme():
    readme = (REPO / "README.md").read_text()
    assert "collector schema > collector.schema.json" in readme
    assert "# yaml-language-server: $schema=" in readme
    assert os.path.exists(REPO / "docs" / "configuration.md") and "docs/configuration.md" in readme
    assert Path(REPO / "docs" / "collector.schema.json").exists()
