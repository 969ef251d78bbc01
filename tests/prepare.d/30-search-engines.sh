#!/usr/bin/env bash
# building and starting Elasticsearch 8, Elasticsearch 9 and OpenSearch 2 from Maven Central (first time about 2 min)
set -euo pipefail
svc="$(dirname "$0")/../services/elasticsearch.sh"
IFS=, read -r -a engines <<<"${COLLECTOR_TEST_ENGINES:-es8,es9,os2}"
for e in "${engines[@]}"; do
  "$svc" start --engine "$e"
done
