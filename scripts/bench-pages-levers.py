"""What the levers left for the site-wide `pages` report would give, on data the queries bench
kept (docs/benchmarks.md, "100M events on a quiet machine"):

    cargo bench --bench queries -- --no-sets --keep DIR      # seeds once, keeps DIR
    scripts/clickhouse.sh start DIR/ch 18123 19123
    python3 scripts/bench-pages-levers.py 18123 [RUNS]
    scripts/clickhouse.sh stop DIR/ch

Times the API's two statements (`pages` and `site_totals` of docs/queries.md, 30 days of the
bench site) sent in pairs as the API sends them, as shipped and with each set merge taken out:
`engaged` as a sum would remove the `engaged` set from both. `site_totals` as it was before
migration 0007 (every path's states of `pages_daily_sum` merged) is timed beside the shipped
one (`site_daily`'s states), as the reference of the same run.
"""
import concurrent.futures as cf
import sys
import time
import urllib.request

port = int(sys.argv[1])
runs = int(sys.argv[2]) if len(sys.argv) > 2 else 15
md = open(__file__.rsplit("/", 2)[0] + "/docs/queries.md").read()


def q(sql, settings=""):
    t = time.time()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/?{settings}", data=sql.encode())
    out = urllib.request.urlopen(req).read().decode()
    return time.time() - t, out


def block(name):
    i = md.index(f"<!-- query: {name} -->")
    j = md.index("```sql\n", i) + len("```sql\n")
    return md[j:md.index("```", j)].strip()


def bind(s):
    return (s.replace("{{db}}", "clicktrail").replace("{site:String}", "'bench'")
            .replace("{device:String}", "''").replace("{from:Date}", "toDate('2024-06-01')")
            .replace("{to:Date}", "toDate('2024-06-30')").replace("{limit:UInt32}", "100"))


def ms(ts):
    ts = sorted(ts)
    return f"p50 {ts[len(ts) // 2] * 1000:.0f} ms, max {ts[-1] * 1000:.0f} ms"


def alone(label, sql):
    q(sql)
    print(f"{label}: {ms([q(sql)[0] for _ in range(runs)])}", flush=True)


def pair(label, a, b):
    q(a), q(b)
    ts = []
    with cf.ThreadPoolExecutor(2) as ex:
        for _ in range(runs):
            t = time.time()
            for f in [ex.submit(q, a), ex.submit(q, b)]:
                f.result()
            ts.append(time.time() - t)
    print(f"{label}: {ms(ts)}", flush=True)


pages, totals = bind(block("pages")), bind(block("site_totals"))
# site_totals before 0007: the distinct counts merged from every path's states.
totals_0006 = bind("""SELECT sumMerge(views) AS views, uniqIfMerge(visitors) AS visitors, uniqIfMerge(engaged) AS engaged,
    views - least(engaged, views) AS bounces, if(views = 0, 0, bounces / views) AS bounce_rate,
    sumMerge(clicks) AS clicks, sumMerge(rage_clicks) AS rage_clicks, sumMerge(dead_clicks) AS dead_clicks,
    sumMerge(error_clicks) AS error_clicks
FROM {{db}}.pages_daily_sum
WHERE site = {site:String} AND day >= {from:Date} AND day <= {to:Date}
  AND ({device:String} = '' OR device_class = {device:String})""")
no_engaged = lambda s: s.replace("uniqIfMerge(engaged)", "toUInt64(0)")
sums_only = lambda s: no_engaged(s).replace("uniqIfMerge(visitors)", "toUInt64(0)")
alone("pages", pages)
alone("site_totals (site_daily, 0007)", totals)
alone("site_totals before 0007 (every path's states)", totals_0006)
pair("pages || site_totals (as shipped)", pages, totals)
pair("pages || site_totals before 0007", pages, totals_0006)
pair("without engaged", no_engaged(pages), no_engaged(totals))
pair("both sets gone", no_engaged(pages), sums_only(totals))
print("site_totals: shipped", q(f"SELECT visitors, engaged FROM ({totals})")[1].strip(),
      "| before 0007", q(f"SELECT visitors, engaged FROM ({totals_0006})")[1].strip(), "| exact visitors",
      q("SELECT uniqExactIf(visitor_id, type = 'pageview') FROM clicktrail.events WHERE site = 'bench' "
        "AND toDate(ts) >= toDate('2024-06-01') AND toDate(ts) <= toDate('2024-06-30')",
        "max_memory_usage=16000000000")[1].strip())
