#!/usr/bin/env python3
"""A node's /metrics read as Prometheus reads it, and the Grafana dashboard checked against it.

    python3 tests/interop/check_metrics.py --url http://127.0.0.1:PORT/metrics \
        --dashboard docs/grafana-dashboard.json [--seed N]

Parses the exposition with the OpenMetrics parser of `prometheus_client` (Prometheus's own
Python client; scripts/test installs it), which refuses anything that is not valid OpenMetrics,
and checks:

    type     the response's Content-Type is OpenMetrics 1.0.0
    parse    the body parses as OpenMetrics (strictly, ending in # EOF)
    kinds    every dabs_* family has the type listed in KINDS below, and none is missing or extra
    apps     the per-application families carry an `app` label with the node's application
    build    dabs_build_info carries `version` and `commit`
    grafana  the dashboard is JSON with panels, and every dabs_* name its queries use is a
             sample name of the exposition

One line per check, then "metrics check: N passed, M failed"; exit 1 on any failure. --seed is
taken for the harness's sake (nothing here is random).
"""

import argparse
import json
import re
import sys
import urllib.request

from prometheus_client.openmetrics.parser import text_string_to_metric_families

CONTENT_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"

COUNTERS = [
    "mp_datagrams_received", "mp_datagrams_sent", "mp_retransmits", "mp_decode_errors",
    "mp_duplicates", "mp_requests_delivered", "mp_calls_failed", "mp_clock_skew",
    "mp_sessions_encrypted", "mp_auth_failures", "mp_replays_dropped", "mp_naks_sent",
    "mp_naks_received", "mp_sessions_reclaimed", "spawns", "moves", "failovers",
    "portions_retired", "auth_failures", "client_alerts",
    # Jobs (seed 002): the owner's counters, and a compute server's own statistics.
    "jobs_accepted", "job_results_committed", "job_results_repeated", "job_tasks_replaced",
    "jobs_taken_over", "job_tasks_completed", "job_tasks_failed", "job_busy_milliseconds",
]
GAUGES = [
    "sessions", "portions", "farm_members", "health_score", "load_score", "accepting",
    "draining", "decider", "app_portions", "app_sessions", "job_tasks_queued", "job_last_done_ms",
]
KINDS = {f"dabs_{n}": "counter" for n in COUNTERS}
KINDS.update({f"dabs_{n}": "gauge" for n in GAUGES})
KINDS["dabs_request_latency_seconds"] = "histogram"
KINDS["dabs_build"] = "info"
PER_APP = ["dabs_app_portions", "dabs_app_sessions", "dabs_request_latency_seconds"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", required=True)
    ap.add_argument("--dashboard", required=True)
    ap.add_argument("--app", default="calc")
    ap.add_argument("--seed", type=int, default=None)
    args = ap.parse_args()

    with urllib.request.urlopen(args.url, timeout=10) as r:
        content_type = r.headers.get("Content-Type")
        body = r.read().decode("utf-8")

    passed = failed = 0
    families = {}

    def check(name, fn):
        nonlocal passed, failed
        try:
            fn()
            print(f"ok    {name}")
            passed += 1
        except Exception as e:  # a check's failure, whatever it is, is reported and counted
            print(f"FAIL  {name}: {type(e).__name__}: {e}")
            failed += 1

    def content_type_matches():
        assert content_type == CONTENT_TYPE, f"Content-Type {content_type!r}"

    def parses():
        for f in text_string_to_metric_families(body):
            families[f.name] = f
        assert families, "no family"

    def kinds():
        ours = {n: f.type for n, f in families.items() if n.startswith("dabs_")}
        missing = sorted(set(KINDS) - set(ours))
        extra = sorted(set(ours) - set(KINDS))
        wrong = {n: (t, KINDS[n]) for n, t in ours.items() if n in KINDS and t != KINDS[n]}
        assert not (missing or extra or wrong), f"missing {missing}, unlisted {extra}, wrong type {wrong}"
        # A counter's samples are NAME_total (and NAME_created): the type survived the parse.
        for n, f in families.items():
            if f.type == "counter":
                names = {s.name for s in f.samples}
                assert names <= {n + "_total", n + "_created"}, f"{n}: samples {names}"

    def apps():
        for n in PER_APP:
            labelled = [s for s in families[n].samples if s.labels.get("app") == args.app]
            assert labelled, f"{n}: no sample with app={args.app!r}"

    def build():
        (s,) = families["dabs_build"].samples
        assert s.name == "dabs_build_info" and s.value == 1, s
        assert re.fullmatch(r"\d+\.\d+\.\d+.*", s.labels["version"]), s.labels
        assert s.labels["commit"], s.labels

    def grafana():
        with open(args.dashboard, encoding="utf-8") as f:
            dash = json.load(f)
        panels = dash["panels"]
        assert panels and dash.get("title"), "a dashboard has a title and panels"
        samples = {s.name for f in families.values() for s in f.samples}
        used = set()
        for p in panels:
            for t in p.get("targets", []):
                used.update(re.findall(r"\bdabs_[a-z_]+", t["expr"]))
        for v in dash.get("templating", {}).get("list", []):
            used.update(re.findall(r"\bdabs_[a-z_]+", v.get("definition", "")))
        assert used, "no query uses a dabs metric"
        unknown = sorted(used - samples)
        assert not unknown, f"queries use names the node does not export: {unknown}"
        print(f"      {len(panels)} panels, {len(used)} metric names")

    check("type", content_type_matches)
    check("parse", parses)
    if families:
        check("kinds", kinds)
        check("apps", apps)
        check("build", build)
        check("grafana", grafana)
    print(f"metrics check: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
