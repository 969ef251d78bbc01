from __future__ import annotations

import pytest

from collector.tags import TagPattern, TagPatternError, TagTemplate, TagTemplateError, template_info

CID = "0123456789ab" + "c" * 52


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("A", "A"),
        ("{{.Name}}", "web-1"),
        ("{{.ID}}", "0123456789ab"),
        ("{{.FullID}}", CID),
        ("{{.ImageName}}", "nginx:1.25"),
        ("{{.ImageID}}", "feedbeefcafe"),
        ("docker.{{.Name}}.{{ .ID }}", "docker.web-1.0123456789ab"),
    ],
)
def test_templates_render_like_docker(template, expected):
    info = template_info(CID, "/web-1", "nginx:1.25", "sha256:feedbeefcafe0000")
    assert TagTemplate(template).render(info) == expected


def test_unknown_template_fields_are_errors_naming_the_field():
    with pytest.raises(TagTemplateError, match=r"\{\{\.Nmae\}\}"):
        TagTemplate("{{.Nmae}}")
    with pytest.raises(TagTemplateError):
        TagTemplate("{{ range .X }}")


@pytest.mark.parametrize(
    ("pattern", "tag", "ok"),
    [
        ("log-test-container-*", "log-test-container-A", True),
        ("log-test-container-*", "log-test-container-A.x", False),
        ("app.**", "app", True),
        ("app.**", "app.web", True),
        ("app.**", "app.web.1", True),
        ("app.**", "apple", False),
        ("app.*", "app.web", True),
        ("app.*", "app.web.1", False),
        ("app.*", "app", False),
        ("**.err", "x.y.err", True),
        ("**.err", "err", True),
        ("{a,b}.x", "a.x", True),
        ("{a,b}.x", "b.x", True),
        ("{a,b}.x", "c.x", False),
        ("a.{x,y.*}", "a.y.z", True),
        ("one two", "two", True),
        ("docker.*", "docker.0123", True),
        ("exact", "exact", True),
        ("exact", "exactly", False),
    ],
)
def test_fluentd_tag_patterns(pattern, tag, ok):
    assert TagPattern(pattern)(tag) is ok


def test_bad_patterns_are_errors():
    for bad in ("{a,b", "a}", "", "   "):
        with pytest.raises(TagPatternError):
            TagPattern(bad)
