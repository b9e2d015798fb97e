"""Runs every SQL of deploy/grafana/clicktrail-analytics.json, its macros expanded as
grafana-clickhouse-datasource expands them, on the sum rollups of migrations/0006_sum_rollups.sql,
and checks the figures against the events inserted (the data of tests/chdb/analytics.py).

    python3 tests/chdb/grafana.py                              # chDB 26.x in-process
    python3 tests/chdb/grafana.py --http URL --version 18.16   # a real server

Macros (the plugin's, with the dashboard's time range as Unix seconds FROM, TO):
  $__timeFilter(c)   c >= toDateTime(FROM) AND c <= toDateTime(TO)
  $__dateFilter(c)   c >= toDate('YYYY-MM-DD') AND c <= toDate('YYYY-MM-DD')
  $__timeInterval(c) toStartOfInterval(toDateTime(c), INTERVAL N second)   (N = the panel's interval)
Variables with :sqlstring are quoted with '' for a quote, as Grafana does.
"""
import argparse
import json
import re
import sys
from collections import defaultdict
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import analytics as a  # noqa: E402

DASH = a.ROOT / "deploy" / "grafana" / "clicktrail-analytics.json"


def expand(sql, frm, to, interval_s, variables):
    sql = re.sub(r"\$__timeFilter\((\w+)\)", lambda m: f"{m[1]} >= toDateTime({int(frm.timestamp())}) AND {m[1]} <= toDateTime({int(to.timestamp())})", sql)
    sql = re.sub(r"\$__dateFilter\((\w+)\)", lambda m: f"{m[1]} >= toDate('{frm.date()}') AND {m[1]} <= toDate('{to.date()}')", sql)
    sql = re.sub(r"\$__timeInterval\((\w+)\)", lambda m: f"toStartOfInterval(toDateTime({m[1]}), INTERVAL {interval_s} second)", sql)
    for name, v in variables.items():
        sql = sql.replace("${%s:sqlstring}" % name, "'" + v.replace("'", "''") + "'")
    assert "$" not in sql, sql
    return sql


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--http")
    ap.add_argument("--version")
    args = ap.parse_args()
    server = a.Http(args.http) if args.http else a.Chdb()
    full = server.query("SELECT version()").strip()
    version = tuple(int(p) for p in (args.version or full).split(".")[:2])
    print(f"grafana: server {full}")
    server.query(f"DROP DATABASE IF EXISTS {a.DB}")
    server.query(f"CREATE DATABASE {a.DB}")
    for f in ("0001_create_events.sql", "0002_analytics.sql", "0003_fold.sql", "0004_pages_daily.sql", "0005_event_from.sql"):
        a.apply_file(server, f, version)
    # 0006 on an empty database, as the runner does it (no collector: nothing before the cutover)
    cutover = int(server.query("SELECT toUInt32(now())").strip())
    ph = a.phases((a.ROOT / "migrations" / "0006_sum_rollups.sql").read_text())
    a.run_phase(server, ph["switch"], version, cutover)
    a.convert(server, ph, version, cutover)
    a.run_phase(server, ph["finish"], version, cutover)
    events, _ = a.generate()
    # each event once (the collector keeps duplicates out), stamped after the cutover
    a.insert(server, events, 2, cutover + 1)
    stored = {e["event_id"]: a.effective(e, 2, True) for e in events}

    dash = json.loads(DASH.read_text())
    frm, to = a.START - timedelta(days=1), a.START + timedelta(days=30)
    site, page = "demo", "/pricing"
    # Expected figures from the distinct events.
    rows = [r for r in stored.values() if r["site"] == site and frm <= r["ts"] <= to]
    def want(path=None):
        sel = [r for r in rows if path is None or r["path"] == path]
        cl = [r for r in sel if r["type"] == "click"]
        return {"views": sum(r["type"] == "pageview" for r in sel), "rage": sum(r["rage"] == 1 for r in cl),
                "dead": sum(r["dead"] == 1 for r in cl), "error": sum(r["error"] == 1 for r in cl), "clicks": len(cl)}

    checked = 0
    for v in dash["templating"]["list"]:
        got = [r[list(r)[0]] for r in a.rows(server, expand(v["query"], frm, to, 3600, {"site": site}))]
        if v["name"] == "site":
            assert got == sorted({r["site"] for r in stored.values()}), got
        else:
            assert set(got) == {r["path"] for r in rows}, got
        checked += 1
    for pg in ["__all", page]:
        w = want(None if pg == "__all" else page)
        for p in dash["panels"]:
            for t in p["targets"]:
                assert t["datasource"]["uid"] == "clickhouse"
                sql = expand(t["rawSql"], frm, to, 3600, {"site": site, "page": pg})
                try:
                    res = a.rows(server, sql)
                except a.ServerError as e:
                    raise SystemExit(f"panel {p['title']!r} failed:\n{sql}\n{e}")
                num = lambda col: sum(int(r[col]) for r in res)
                title = p["title"]
                if title == "Page views" or title == "Page views over time":
                    assert num("views") == w["views"], (title, pg, num("views"), w)
                elif title.startswith("Rage, dead and error"):
                    assert (num("rage"), num("dead"), num("error")) == (w["rage"], w["dead"], w["error"]), (title, pg, w)
                elif title == "Top pages":
                    assert num("views") == want()["views"], (title, res)
                elif title == "Elements of the page":
                    assert num("clicks") == w["clicks"], (title, pg, num("clicks"), w)
                elif title == "Scroll depth reached":
                    assert res and all(0 <= int(r["depth"]) <= 100 for r in res), res
                checked += 1
    print(f"grafana: {checked} queries checked, all figures match")


if __name__ == "__main__":
    main()
