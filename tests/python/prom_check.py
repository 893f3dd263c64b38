"""Parses OpenMetrics text with Prometheus's own Python parser (prometheus-client) and prints every sample as
`name{labels} value`, one per line; exits non-zero (with the parser's error) on text Prometheus would refuse.

    python tests/python/prom_check.py METRICS.txt
"""
import sys

from prometheus_client.openmetrics.parser import text_string_to_metric_families

text = open(sys.argv[1]).read()
try:
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            print(f"{s.name}{{{labels}}} {s.value}")
except Exception as e:  # noqa: BLE001 - any parse failure is the answer
    print(f"refused by the OpenMetrics parser: {e}", file=sys.stderr)
    sys.exit(1)
