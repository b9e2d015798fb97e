"""What the levers left for the site-wide `pages` report would give, on data the queries bench
kept (docs/benchmarks.md, "100M events on a quiet machine"):

    cargo bench --bench queries -- --no-sets --keep DIR      # seeds once, keeps DIR
    scripts/clickhouse.sh start DIR/ch 18123 19123
    python3 scripts/bench-pages-levers.py 18123 [RUNS]
    scripts/clickhouse.sh stop DIR/ch

Times the API's two statements (`pages` and `site_totals` of docs/queries.md, 30 days of the
bench site) sent in pairs as the API sends them, as shipped and with each set merge taken out:
`engaged` as a sum would remove the `engaged` set from both. Then the weekly-states lever:
the same sets merged per ISO week in tables built here and dropped at the end. (Migration
0007's `site_daily` was timed here too, against this `site_totals`; 0008 dropped it:
docs/benchmarks.md, "site_daily (0007) at 100M events".)
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
no_engaged = lambda s: s.replace("uniqIfMerge(engaged)", "toUInt64(0)")
sums_only = lambda s: no_engaged(s).replace("uniqIfMerge(visitors)", "toUInt64(0)")
alone("pages", pages)
alone("site_totals", totals)
pair("pages || site_totals (as shipped)", pages, totals)
pair("without engaged", no_engaged(pages), no_engaged(totals))
pair("both sets gone", no_engaged(pages), sums_only(totals))

# Weekly states: the same `visitors` and `engaged` states merged per ISO week (toMonday), so a
# 30-day range merges 4 weekly states and 2 edge days' per path instead of 30 daily ones. A
# visitor of several days of a week, and every state past uniq's 65,536-member cap, is one
# member less to merge. Built here from the kept rollups (a set union, so exact), dropped at
# the end; what a `pages_weekly` / `site_weekly` migration would give before it is written.
big = "max_memory_usage=16000000000"
for t, keys in [("lever_pages_weekly", "site, week, device_class, path"),
                ("lever_site_weekly", "site, week, device_class")]:
    q(f"DROP TABLE IF EXISTS clicktrail.{t}")
    q(f"CREATE TABLE clicktrail.{t} ENGINE = AggregatingMergeTree() ORDER BY ({keys}) AS "
      f"SELECT {keys.replace('week', 'toMonday(day) AS week')}, uniqIfMergeState(visitors) AS visitors, "
      f"uniqIfMergeState(engaged) AS engaged FROM clicktrail.pages_daily_sum "
      f"GROUP BY {keys.replace('week', 'toMonday(day)')}", big)
    q(f"OPTIMIZE TABLE clicktrail.{t} FINAL", big)
# 2024-06-01 .. 2024-06-30: weeks of 06-03 .. 06-24 whole, 06-01 and 06-02 as days.
weeks = "week >= toDate('2024-06-03') AND week <= toDate('2024-06-24')"
edge = "(day >= toDate('2024-06-01') AND day <= toDate('2024-06-02'))"


def weeks_and_edges(table, cols, where=""):
    """`cols` of the bench site's whole weeks in `table` and of its edge days' daily states."""
    return (f"SELECT {cols} FROM clicktrail.{table} WHERE site = 'bench' AND {weeks}{where}\n"
            f"        UNION ALL\n"
            f"        SELECT {cols} FROM clicktrail.pages_daily_sum WHERE site = 'bench' AND {edge}{where}")


top = """SELECT path FROM clicktrail.pages_daily_sum
    WHERE site = 'bench' AND day >= toDate('2024-06-01') AND day <= toDate('2024-06-30')
    GROUP BY path ORDER BY sumMerge(views) DESC, path LIMIT 100"""
# The shipped statement with its two sets taken out, joined to the top paths' weekly sets.
pages_sums = sums_only(pages)
pages_weekly = f"""SELECT path, views, visitors, views - least(engaged, views) AS bounces, clicks, median_engaged_s
FROM (SELECT path, views, clicks, median_engaged_s FROM ({pages_sums}))
ANY LEFT JOIN
(
    SELECT path, uniqIfMerge(visitors) AS visitors, uniqIfMerge(engaged) AS engaged
    FROM
    (
        {weeks_and_edges("lever_pages_weekly", "path, visitors, engaged", f" AND path IN ({top})")}
    )
    GROUP BY path
) USING path
ORDER BY views DESC, path"""
# The shipped sums beside the site's weekly sets and the edge days' states of every path.
totals_weekly = f"""SELECT views, visitors, engaged
FROM (SELECT views FROM ({sums_only(totals)}))
CROSS JOIN
(
    SELECT uniqIfMerge(visitors) AS visitors, uniqIfMerge(engaged) AS engaged
    FROM
    (
        {weeks_and_edges("lever_site_weekly", "visitors, engaged")}
    )
)"""
alone("pages, weekly sets", pages_weekly)
alone("site_totals, weekly sets", totals_weekly)
pair("pages || site_totals, weekly sets", pages_weekly, totals_weekly)


def tsv_rows(sql):
    out = q(f"SELECT path, visitors, bounces FROM ({sql}) ORDER BY views DESC, path FORMAT TSV")[1]
    return [r.split("\t") for r in out.split("\n") if r]


shipped_rows = tsv_rows(pages)
weekly_rows = tsv_rows(pages_weekly)
diff = max((abs(int(a[k]) - int(b[k])) / max(1, int(a[k])), a[0])
           for a, b in zip(shipped_rows, weekly_rows) for k in (1, 2))
print(f"weekly against shipped, top 100: same paths in the same order: "
      f"{[r[0] for r in shipped_rows] == [r[0] for r in weekly_rows]}; "
      f"largest relative difference in visitors or bounces {diff[0] * 100:.2f} % ({diff[1]})")
print("site_totals weekly", q(f"SELECT visitors, engaged FROM ({totals_weekly})")[1].strip())
for t in ("lever_pages_weekly", "lever_site_weekly"):
    q(f"DROP TABLE clicktrail.{t}")
print("site_totals: shipped", q(f"SELECT visitors, engaged FROM ({totals})")[1].strip(), "| exact visitors",
      q("SELECT uniqExactIf(visitor_id, type = 'pageview') FROM clicktrail.events WHERE site = 'bench' "
        "AND toDate(ts) >= toDate('2024-06-01') AND toDate(ts) <= toDate('2024-06-30')",
        big)[1].strip())
