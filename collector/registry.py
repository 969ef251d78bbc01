"""Every component type, in one table: ``type`` -> (module, config class, implementation class).

Adding a component is adding a row here; config.py builds its discriminated unions from it.
"""

from __future__ import annotations

import importlib
from typing import Any

SOURCES: dict[str, tuple[str, str, str]] = {
    "docker_json_file": ("collector.sources.docker_json_file", "DockerJsonFileConfig", "DockerJsonFileSource"),
    "gelf": ("collector.sources.gelf", "GelfSourceConfig", "GelfSource"),
    "fluent_forward": ("collector.sources.fluent_forward", "FluentForwardConfig", "FluentForwardSource"),
    "syslog": ("collector.sources.syslog", "SyslogSourceConfig", "SyslogSource"),
    "journald": ("collector.sources.journald", "JournaldConfig", "JournaldSource"),
}
TRANSFORMS: dict[str, tuple[str, str, str]] = {
    "docker_metadata": ("collector.transforms.docker_metadata", "DockerMetadataConfig", "DockerMetadataTransform"),
    "filter": ("collector.transforms.filter", "FilterConfig", "FilterTransform"),
    "route": ("collector.transforms.route", "RouteConfig", "RouteTransform"),
    "parse": ("collector.transforms.parse", "ParseConfig", "ParseTransform"),
    "multiline": ("collector.transforms.multiline", "MultilineConfig", "MultilineTransform"),
}
SINKS: dict[str, tuple[str, str, str]] = {
    "console": ("collector.sinks.console", "ConsoleConfig", "ConsoleSink"),
    "file": ("collector.sinks.file", "FileConfig", "FileSink"),
    "gelf": ("collector.sinks.gelf", "GelfSinkConfig", "GelfSink"),
    "elasticsearch": ("collector.sinks.elasticsearch", "ElasticsearchConfig", "ElasticsearchSink"),
}


def config_classes(table: dict[str, tuple[str, str, str]]) -> list[Any]:
    return [getattr(importlib.import_module(mod), cfg) for mod, cfg, _ in table.values()]


def config_class(table: dict[str, tuple[str, str, str]], type_: str) -> Any:
    mod, cfg, _ = table[type_]
    return getattr(importlib.import_module(mod), cfg)


def implementation(table: dict[str, tuple[str, str, str]], type_: str) -> Any:
    mod, _, impl = table[type_]
    return getattr(importlib.import_module(mod), impl)
