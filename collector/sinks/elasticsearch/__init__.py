"""Sink ``elasticsearch``: Elasticsearch 8/9 and OpenSearch 2 through the bulk API.

Split by concern: config.py (options), client.py (HTTP, auth, TLS, failover), encoder.py
(bulk bodies, target names), templates.py (mappings, what setup installs), sink.py (batching,
in-flight requests, per-item outcomes, retries, acknowledgements).
"""

from collector.sinks.elasticsearch.config import ElasticsearchConfig
from collector.sinks.elasticsearch.sink import ElasticsearchSink

__all__ = ["ElasticsearchConfig", "ElasticsearchSink"]
