"""`/metrics` as Trustee's KBS exposes it (`kbs/src/prometheus/mod.rs`, `kbs/src/api_server.rs`).

The same families, names, help texts, label names and histogram buckets as v0.20.0 (unchanged
through main), written in the Prometheus text format that the Rust `prometheus` crate's
TextEncoder produces: families sorted by name, `# HELP`/`# TYPE` lines, label-less counters
present from the start at 0, labelled families only once a label value was seen. Served with
no Content-Type header (`HttpResponse::Ok().body(report)`).

Kept as Trustee keeps them, quirks included: the middleware counts only `/kbs…` requests and
observes response sizes into `kbs_http_request_size_bytes` (so `kbs_http_response_size_bytes`
stays empty). Not produced: the external-plugin families (that cargo feature is not in the
stand-in). `kbs_build_info` carries the emulated version and git_hash/build_date "stand-in".
"""

from __future__ import annotations

import threading
from collections import defaultdict

REQUEST_DURATION_BUCKETS = (0.0005, 0.001, 0.005, 0.01, 0.05, 0.5, 1.0)
SIZE_BUCKETS = (32.0, 128.0, 512.0, 2048.0, 8192.0)  # exponential_buckets(32, 4, 5)

_COUNTERS = {
    "kbs_attestation_errors_total": "Total count of errors during attestation processing",
    "kbs_attestation_requests_total": "Total count of attestation requests",
    "kbs_auth_errors_total": "Total count of errors during auth processing",
    "kbs_auth_requests_total": "Total count of auth requests",
    "kbs_auth_successes_total": "Total count of successfully authenticated requests",
    "kbs_http_requests_total": "Total HTTP requests count",
    "kbs_policy_approvals_total": "Total count of requests approved by KBS policy",
    "kbs_policy_errors_total": "Total count of errors during KBS evaluation",
    "kbs_policy_evaluations_total": "Total count of KBS policy evaluations",
    "kbs_policy_violations_total": "Total count of requests denied by KBS policy",
}
_LABELLED_COUNTERS = {
    "kbs_attestation_failures_total": ("Total count of attestation failures", "tee_type"),
    "kbs_attestation_successes_total": ("Total count of attestation successes", "tee_type"),
    "kbs_resource_deletes_total": ("KBS resource delete count", "resource_path"),
    "kbs_resource_reads_total": ("KBS resource read count", "resource_path"),
    "kbs_resource_writes_total": ("KBS resource write count", "resource_path"),
}
_HISTOGRAMS = {
    "kbs_http_request_duration_seconds": (
        "Distribution of request handling duration",
        REQUEST_DURATION_BUCKETS,
    ),
    "kbs_http_request_size_bytes": ("Distribution of request body sizes", SIZE_BUCKETS),
    "kbs_http_response_size_bytes": ("Distribution of response body sizes", SIZE_BUCKETS),
}


def _number(value: float) -> str:
    """Rust's f64 Display, as the prometheus crate writes sample values ("3", "0.5")."""
    if value == int(value) and abs(value) < 1e16:
        return str(int(value))
    return repr(value)


class KbsMetrics:
    def __init__(self, trustee_version: str) -> None:
        self._lock = threading.Lock()
        self._counters = dict.fromkeys(_COUNTERS, 0.0)
        self._labelled: dict[str, dict[str, float]] = defaultdict(dict)
        self._histograms = {
            name: [[0] * len(buckets), 0.0, 0] for name, (_, buckets) in _HISTOGRAMS.items()
        }
        self.active_connections = 0
        self._version = trustee_version

    def inc(self, name: str, label: str | None = None) -> None:
        with self._lock:
            if label is None:
                self._counters[name] += 1
            else:
                values = self._labelled[name]
                values[label] = values.get(label, 0.0) + 1

    def observe(self, name: str, value: float) -> None:
        buckets = _HISTOGRAMS[name][1]
        with self._lock:
            counts, _, _ = entry = self._histograms[name]
            for i, bound in enumerate(buckets):
                if value <= bound:
                    counts[i] += 1
            entry[1] += value
            entry[2] += 1

    def add_active(self, delta: int) -> None:
        with self._lock:
            self.active_connections += delta

    def render(self) -> str:
        with self._lock:
            families: dict[str, str] = {}
            for name, help_text in _COUNTERS.items():
                families[name] = _family(
                    name, help_text, "counter", [f"{name} {_number(self._counters[name])}"]
                )
            for name, (help_text, label) in _LABELLED_COUNTERS.items():
                values = self._labelled.get(name)
                if values:
                    lines = [
                        f'{name}{{{label}="{_escape(v)}"}} {_number(n)}'
                        for v, n in sorted(values.items())
                    ]
                    families[name] = _family(name, help_text, "counter", lines)
            for name, (help_text, buckets) in _HISTOGRAMS.items():
                counts, total, count = self._histograms[name]
                lines = [
                    f'{name}_bucket{{le="{_number(b)}"}} {c}'
                    for b, c in zip(buckets, counts, strict=True)
                ]
                lines += [
                    f'{name}_bucket{{le="+Inf"}} {count}',
                    f"{name}_sum {_number(total)}",
                    f"{name}_count {count}",
                ]
                families[name] = _family(name, help_text, "histogram", lines)
            families["kbs_http_active_connections"] = _family(
                "kbs_http_active_connections",
                "Count of HTTP connections being processed at the moment",
                "gauge",
                [f"kbs_http_active_connections {self.active_connections}"],
            )
            families["kbs_build_info"] = _family(
                "kbs_build_info",
                "KBS binary build info",
                "gauge",
                [
                    'kbs_build_info{build_date="stand-in",git_hash="stand-in",'
                    f'version="{_escape(self._version)}"}} 1'
                ],
            )
        return "".join(families[name] for name in sorted(families))


def _family(name: str, help_text: str, kind: str, lines: list[str]) -> str:
    return f"# HELP {name} {help_text}\n# TYPE {name} {kind}\n" + "".join(
        f"{line}\n" for line in lines
    )


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
