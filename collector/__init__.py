"""collector: Docker logs to Elasticsearch, OpenSearch and Graylog, nothing lost, nothing duplicated."""

__version__ = "0.1.0"
