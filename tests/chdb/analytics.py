"""Proves migrations/0002_analytics.sql, 0003_fold.sql, 0004_pages_daily.sql and every query in docs/queries.md, cell by cell.

    python3 tests/chdb/analytics.py                       # chDB 26.x in-process (>= 20.1 rendering)
    python3 tests/chdb/analytics.py --http URL --version 18.16   # a real server (scripts/test-analytics.sh)

What it does, on one fresh database:
  1. applies 0001 (rendered for the server as src/migrate.rs `Dialect::render` does), inserts the
     "pre" events with the collector's current column list (no 0002 columns), including a block
     of exact duplicates;
  2. applies 0002 (views + backfill), so the pre rows reach the rollups only via the backfill,
     with device_class computed from its DEFAULT;
  3. inserts more events in separate blocks: with the full new column list, with the old list
     (a collector not yet updated), exact duplicates of earlier blocks (also of pre rows);
  4. runs every statement of 0002 again (idempotence: a re-run backfill must double nothing);
     on 18.16 the ALTER fails with code 44 (no ADD COLUMN IF NOT EXISTS) and is skipped, as the
     migration runner must do;
  5. inserts a last block and its duplicate;
  6. extracts every `<!-- query: NAME -->` block of docs/queries.md, runs it for many
     parameter combinations and compares each result cell with the value computed here from
     the distinct events; then OPTIMIZE ... FINAL on the rollups and compares again;
  7. checks that `uniq` is exact up to 65536 ids (vs uniqExact) and measures its error above.
Exit code 0 = everything matched.
"""
import argparse
import json
import math
import random
import re
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import defaultdict
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DB = "clicktrail"

# ---------------------------------------------------------------- mirror of src/migrate.rs


def render(sql, version, db=DB):
    """Dialect::render, plus {{if_not_exists}} (proposed for 0002, see docs/queries.md)."""
    low_cardinality = version >= (20, 1)
    non_replicated_dedup = version >= (21, 3)
    add_column_if_not_exists = version >= (20, 1)
    return (
        sql.replace("{{db}}", db)
        .replace("{{lowcard_string}}", "LowCardinality(String)" if low_cardinality else "String")
        .replace(
            "{{dedup_settings}}",
            ", non_replicated_deduplication_window = 1000" if non_replicated_dedup else "",
        )
        .replace("{{if_not_exists}}", "IF NOT EXISTS " if add_column_if_not_exists else "")
    )


def statements(rendered):
    """migrate::statements: split at lines ending in ';', drop comment and blank lines."""
    out, cur = [], ""
    for line in rendered.splitlines():
        t = line.strip()
        if t.startswith("--") or not t:
            continue
        cur += line + "\n"
        if t.endswith(";"):
            out.append(cur.strip().rstrip(";").strip())
            cur = ""
    if cur.strip():
        out.append(cur.strip())
    return out


# ---------------------------------------------------------------- servers


class ServerError(Exception):
    def __init__(self, msg):
        super().__init__(msg)
        m = re.search(r"Code: (\d+)", msg)
        self.code = int(m.group(1)) if m else None


class Http:
    def __init__(self, url):
        self.url = url.rstrip("/") + "/"

    def query(self, sql, fmt=None):
        body = sql + (f"\nFORMAT {fmt}" if fmt else "")
        req = urllib.request.Request(self.url, data=body.encode())
        try:
            with urllib.request.urlopen(req, timeout=600) as r:
                return r.read().decode()
        except urllib.error.HTTPError as e:
            raise ServerError(e.read().decode()) from None


class Chdb:
    def __init__(self):
        from chdb import session

        self.dir = tempfile.TemporaryDirectory()
        self.s = session.Session(self.dir.name)

    def query(self, sql, fmt=None):
        try:
            return str(self.s.query(sql, fmt or "TSV"))
        except Exception as e:  # chDB raises on any server error
            raise ServerError(str(e)) from None


def rows(server, sql):
    """Query → list of dicts (TSVWithNames; arrays decoded)."""
    text = server.query(sql, "TabSeparatedWithNames")
    lines = text.rstrip("\n").split("\n")
    if not lines or not lines[0]:
        return []
    names = lines[0].split("\t")
    out = []
    for line in lines[1:]:
        vals = [unescape_tsv(v) for v in line.split("\t")]
        out.append(dict(zip(names, vals)))
    return out


def unescape_tsv(v):
    return re.sub(r"\\(.)", lambda m: {"t": "\t", "n": "\n", "\\": "\\", "'": "'", "0": "\0"}.get(m.group(1), m.group(1)), v)


# ---------------------------------------------------------------- queries from docs/queries.md


def load_queries(path=ROOT / "docs" / "queries.md"):
    text = path.read_text()
    found = re.findall(r"<!-- query: (\w+) -->\s*```sql\n(.*?)```", text, re.S)
    return {name: sql.strip() for name, sql in found}


def sql_string(s):
    return "'" + s.replace("\\", "\\\\").replace("'", "\\'") + "'"


def bind(sql, params, db=DB):
    """Fill {name:Type} as literals (18.16 has no query parameters; same rendering everywhere)."""

    def lit(m):
        name, typ = m.group(1), m.group(2)
        v = params[name]
        if typ == "String":
            return sql_string(v)
        if typ == "Date":
            return f"toDate('{v}')"
        if typ in ("UInt32", "UInt64"):
            return str(int(v))
        raise ValueError(f"type {typ} of {name}")

    sql = sql.replace("{{db}}", db)
    used = set(re.findall(r"\{(\w+):(\w+)\}", sql))
    types = defaultdict(set)
    for n, t in used:
        types[n].add(t)
    assert all(len(t) == 1 for t in types.values()), f"a parameter with two types: {types}"
    return re.sub(r"\{(\w+):(\w+)\}", lit, sql)


# ---------------------------------------------------------------- events

OLD_COLUMNS = [
    ("event_id", "s"), ("site", "s"), ("type", "s"), ("name", "s"), ("ts", "t"), ("ts_ms", "n"),
    ("received_at", "t"), ("url", "s"), ("host", "s"), ("path", "s"), ("referrer", "s"),
    ("title", "s"), ("session_id", "s"), ("visitor_id", "s"), ("x", "n"), ("y", "n"),
    ("viewport_w", "n"), ("viewport_h", "n"), ("doc_w", "n"), ("doc_h", "n"), ("selector", "s"),
    ("text", "s"), ("rage", "n"), ("scroll_depth", "n"), ("duration_ms", "n"), ("props", "s"),
    ("browser", "s"), ("os", "s"), ("device", "s"), ("user_agent", "s"), ("ip", "s"),
]
NEW_COLUMNS = [("elem_x", "n"), ("elem_y", "n"), ("dead", "n"), ("error", "n"),
               ("device_class", "s"), ("pageview_id", "s")]
FROM_COLUMNS = [("depth_from", "n"), ("duration_from_ms", "n")]  # 0005

SITES = ["demo", "other"]
# A site whose events all arrive after the cutover, each once, from the new snippet (with `from`):
# there the sums must equal the per-page-view truth (deepest scroll, longest engagement).
EXACT_SITE = "exact"
PATHS = ["/", "/pricing", "/o'reilly\\guide"]
SELECTORS = ["#buy", "main>a:nth-of-type(2)", "body", "nav>button"]
WIDTHS = [0, 375, 767, 768, 1023, 1024, 1440]
START = datetime(2024, 3, 30, 20, 0, tzinfo=timezone.utc)  # crosses a day and a month
ENG_BOUNDS = [1, 2, 3, 5, 7, 10, 15, 20, 30, 45, 60, 90, 120, 180, 240, 300, 420, 600, 900, 1200, 1800, 2700, 3600]


def device_class(w):
    return "unknown" if w == 0 else "mobile" if w < 768 else "tablet" if w < 1024 else "desktop"


def generate(seed=13, sites=SITES, n_pageviews=260, new_snippet_share=0.6):
    """Page views with their clicks, scrolls, engagement and custom events. Each event gets the
    values the snippet would send; `block` is assigned later."""
    rnd = random.Random(seed)
    n_id = [0]

    def rid():
        n_id[0] += 1
        return f"{rnd.getrandbits(32)}-{n_id[0]}"

    events = []
    visitors = [f"v{i}" for i in range(40)]
    for pvn in range(n_pageviews):
        site = rnd.choice(sites) if pvn % 7 else sites[0]
        path = rnd.choice(PATHS)
        visitor = rnd.choice(visitors)
        # a few sessions get several page views, some of the same path (legacy key merges them)
        session = f"s{visitor}-{rnd.randrange(3)}"
        vw = rnd.choice(WIDTHS)
        dw = rnd.choice([0, vw, vw + 17, 1920]) if vw else rnd.choice([0, 1280])
        t0 = START + timedelta(seconds=rnd.randrange(0, 2 * 86400))
        new_snippet = rnd.random() < new_snippet_share
        pv_id = rid()
        base = dict(site=site, path=path, url="https://ex.com" + path, host="ex.com",
                    session_id=session, visitor_id=visitor, viewport_w=vw,
                    viewport_h=rnd.choice([0, 640, 700, 913]), doc_h=rnd.choice([0, 500, 3000, 7777]),
                    doc_w=dw, new_snippet=new_snippet, pv=pv_id)
        events.append(dict(base, event_id=pv_id, type="pageview", ts=t0, title="T", referrer=""))
        t = t0
        for _ in range(rnd.choice([0, 0, 1, 2, 3, 5])):
            t += timedelta(seconds=rnd.randrange(1, 400))
            ex, ey = rnd.choice([(0, 0), (65535, 65535), (16383, 16384), (rnd.randrange(65536), rnd.randrange(65536))])
            events.append(dict(base, event_id=rid(), type="click", ts=t,
                               x=rnd.choice([-3, 0, 5, 640, 1279, 1300, 5000]) if rnd.random() < 0.3 else rnd.randrange(0, 1500),
                               y=rnd.choice([-1, 0, 19, 20, 2999, 2_000_000]) if rnd.random() < 0.2 else rnd.randrange(0, 3000),
                               selector=rnd.choice(SELECTORS), text="Buy",
                               rage=int(rnd.random() < 0.25), dead=int(rnd.random() < 0.25),
                               error=int(rnd.random() < 0.2), elem_x=ex, elem_y=ey))
        depth = 0
        for _ in range(rnd.choice([0, 1, 1, 2, 3])):
            t += timedelta(seconds=rnd.randrange(1, 3000))
            prev, depth = depth, min(100, depth + rnd.choice([1, 4, 5, 13, 30, 55, 100]))
            # `from`: what this page view had sent before (the snippet's wire field, 0005)
            events.append(dict(base, event_id=rid(), type="scroll", ts=t, scroll_depth=depth, depth_from=prev))
        ms = 0
        for _ in range(rnd.choice([0, 1, 1, 2, 3])):
            t += timedelta(seconds=rnd.randrange(1, 3000))
            prev, ms = ms, ms + rnd.choice([400, 600, 1000, 2500, 9000, 10000, 30000, 200000, 4_000_000])
            events.append(dict(base, event_id=rid(), type="engagement", ts=t, duration_ms=ms, duration_from_ms=prev))
        if rnd.random() < 0.1:
            events.append(dict(base, event_id=rid(), type="custom", ts=t, name="signup", props="{}"))
    # a legacy (pre-0002) click with no geometry at all, and one on an empty path
    events.append(dict(site="demo", path="/", session_id="sx", visitor_id="vx", viewport_w=0,
                       doc_w=0, event_id=rid(), type="click", ts=START, x=10, y=10,
                       selector="body", rage=1, new_snippet=False, pv="zz"))
    for e in events:
        e.setdefault("received_at", e["ts"])
        e["ts_ms"] = rnd.randrange(1000)
    return events, rnd


def value(e, col):
    if col == "device_class":
        return device_class(e.get("viewport_w", 0))
    if col == "pageview_id":
        return e["pv"] if e.get("new_snippet") else ""
    if col in ("elem_x", "elem_y", "dead", "error", "depth_from", "duration_from_ms") and not e.get("new_snippet"):
        return 0
    v = e.get(col)
    if v is None:
        return "" if dict(OLD_COLUMNS + NEW_COLUMNS + FROM_COLUMNS).get(col) == "s" else 0
    return v


def columns(level):
    """The insert's column list: 0 = before 0002, 1 = with 0002's, 2 = with 0005's too."""
    return OLD_COLUMNS + (NEW_COLUMNS if level >= 1 else []) + (FROM_COLUMNS if level >= 2 else [])


def insert(server, evs, level, inserted_at=None):
    cols = columns(level)
    tuples = []
    for e in evs:
        vals = [] if inserted_at is None else [f"toDateTime({inserted_at})"]
        for c, kind in cols:
            v = value(e, c)
            if kind == "t":
                vals.append(f"'{v.strftime('%Y-%m-%d %H:%M:%S')}'")
            elif kind == "s":
                vals.append(sql_string(str(v)))
            else:
                vals.append(str(int(v)))
        tuples.append("(" + ", ".join(vals) + ")")
    names = ([] if inserted_at is None else ["inserted_at"]) + [c for c, _ in cols]
    server.query(f"INSERT INTO {DB}.events ({', '.join(names)}) VALUES " + ", ".join(tuples))


def effective(e, level, new_side):
    """The row as stored: 0002 / 0005 columns are their defaults when the insert did not list
    them. new_side: stamped at or after the cutover (counted by 0006's views, as a sum)."""
    r = {c: value(e, c) for c, _ in OLD_COLUMNS}
    for c, _ in NEW_COLUMNS:
        r[c] = value(e, c) if level >= 1 else (device_class(r["viewport_w"]) if c == "device_class" else ("" if c == "pageview_id" else 0))
    for c, _ in FROM_COLUMNS:
        r[c] = value(e, c) if level >= 2 else 0
    r["new_side"] = new_side
    return r


# ---------------------------------------------------------------- the model (expected values)


def pv_key(r):
    return r["pageview_id"] if r["pageview_id"] else r["session_id"] + " " + r["path"]


class Tally:
    """A count as the rollups keep it: rows stamped before the cutover as a set of ids (the old
    rollups, converted by 0006), rows stamped after it one each (0006's sums)."""

    def __init__(self):
        self.ids, self.n = set(), 0

    def add(self, old, key):
        if old:
            self.ids.add(key)
        else:
            self.n += 1

    def __len__(self):
        return len(self.ids) + self.n


def step(v):
    return min(v, 100) // 5


def scroll_buckets(r):
    """The 5 % buckets one scroll event adds 1 to (0006): above its `from`, up to its depth, and
    bucket 0 on its page view's first send."""
    lo, hi = step(r["depth_from"]), step(r["scroll_depth"])
    return ([0] if r["depth_from"] == 0 else []) + [5 * i for i in range(lo + 1, hi + 1)]


def eng_bounds_added(r):
    return [i for i, b in enumerate(ENG_BOUNDS) if r["duration_from_ms"] < b * 1000 <= r["duration_ms"]]


class Model:
    """Expected values from the stored rows. as_sets: every row counted as the old set rollups
    count (the per-page-view truth: deepest scroll, longest engagement, each event id once)."""

    def __init__(self, stored, as_sets=False):
        self.r = list(stored.values())
        self.as_sets = as_sets

    def old(self, r):
        return self.as_sets or not r["new_side"]

    def okey(self, r):
        """The page-view key of a set-counted row. Converted rows (0006) are counts per rollup
        row, i.e. per day and device class: a page view (or a legacy key covering several)
        with events on two days or in two device classes counts once in each."""
        return pv_key(r) if self.as_sets else (r["ts"].date(), r["device_class"], pv_key(r))

    def sel(self, site, frm, to, device, path=None, types=None):
        for r in self.r:
            d = r["ts"].date().isoformat()
            if r["site"] != site or not (frm <= d <= to):
                continue
            if device and r["device_class"] != device:
                continue
            if path is not None and r["path"] != path:
                continue
            if types and r["type"] not in types:
                continue
            yield r

    def _stats(self, rows):
        p = defaultdict(Tally)
        p["visitors"], p["engaged"] = set(), set()
        for r in rows:
            old = self.old(r)
            if r["type"] == "pageview":
                p["views"].add(old, r["event_id"])
                p["visitors"].add(r["visitor_id"])
            if r["type"] == "click":
                p["clicks"].add(old, r["event_id"])
                p["engaged"].add(pv_key(r))
                for f in ("rage", "dead", "error"):
                    if r[f] == 1:
                        p[f].add(old, r["event_id"])
            if r["type"] == "engagement" and r["duration_ms"] >= 10000:
                p["engaged"].add(pv_key(r))
        return p

    def pages(self, site, frm, to, device, limit):
        by = defaultdict(list)
        for r in self.sel(site, frm, to, device, types={"pageview", "click", "engagement"}):
            by[r["path"]].append(r)
        # per page view (old rows): deepest scroll, engaged time (max of the cumulative values);
        # per event (new rows): what it adds
        deep = defaultdict(lambda: defaultdict(int))
        scrolled_new, steps_new = defaultdict(int), defaultdict(int)
        for r in self.sel(site, frm, to, device, types={"scroll"}):
            if self.old(r):
                k = self.okey(r)
                deep[r["path"]][k] = max(deep[r["path"]][k], r["scroll_depth"])
            else:
                scrolled_new[r["path"]] += r["depth_from"] == 0
                steps_new[r["path"]] += max(0, step(r["scroll_depth"]) - step(r["depth_from"]))
        eng = defaultdict(lambda: defaultdict(int))
        reached_new = defaultdict(lambda: [0] * len(ENG_BOUNDS))
        any_new = defaultdict(bool)
        for r in self.sel(site, frm, to, device, types={"engagement"}):
            if self.old(r):
                if r["duration_ms"] >= 1000:
                    k = self.okey(r)
                    eng[r["path"]][k] = max(eng[r["path"]][k], r["duration_ms"])
            else:
                any_new[r["path"]] = True
                for i in eng_bounds_added(r):
                    reached_new[r["path"]][i] += 1
        out = []
        for path, prs in by.items():
            p = self._stats(prs)
            views = len(p["views"])
            engaged = len(p["engaged"])
            bounces = views - min(engaged, views)
            d = deep.get(path, {})
            scrolled = len(d) + scrolled_new[path]
            steps = sum(step(v) for v in d.values()) + steps_new[path]
            avg = 5 * steps / scrolled if scrolled else 0.0
            # median through the reached buckets, as documented
            bounds = [0] + ENG_BOUNDS
            reached = [float(views)] + [float(sum(1 for v in eng.get(path, {}).values() if v >= b * 1000) + reached_new[path][i]) for i, b in enumerate(ENG_BOUNDS)]
            half = views / 2
            j = next((i + 1 for i, c in enumerate(reached) if c < half), 0)
            if views == 0:
                med = 0.0
            elif j == 0:
                med = 3600.0
            else:
                lo, hi, clo, chi = bounds[j - 2], bounds[j - 1], reached[j - 2], reached[j - 1]
                med = lo + (hi - lo) * (clo - half) / (clo - chi)
                # the true median of per-page-view engaged time lies in [lo, hi) (set-counted rows)
                vals = sorted([v / 1000 for v in eng.get(path, {}).values()] + [0.0] * max(0, views - len(eng.get(path, {}))))
                if len(eng.get(path, {})) <= views and not any_new[path]:
                    at_least_lo = sum(1 for v in vals if v >= lo)
                    at_least_hi = sum(1 for v in vals if v >= hi)
                    assert at_least_lo >= half > at_least_hi, (path, lo, hi)
            out.append(dict(path=path, views=views, visitors=len(p["visitors"]), bounces=bounces,
                            bounce_rate=(bounces / views if views else 0.0), clicks=len(p["clicks"]),
                            rage_clicks=len(p["rage"]), dead_clicks=len(p["dead"]), error_clicks=len(p["error"]),
                            avg_max_scroll_pct=avg, median_engaged_s=med))
        out.sort(key=lambda x: (-x["views"], x["path"]))
        return out[:limit]

    def page_trend(self, site, path, frm, to, device):
        by = defaultdict(lambda: (Tally(), set()))
        for r in self.sel(site, frm, to, device, path=path or None, types={"pageview"}):
            h = r["ts"].replace(minute=0, second=0).strftime("%Y-%m-%d %H:%M:%S")
            by[h][0].add(self.old(r), r["event_id"])
            by[h][1].add(r["visitor_id"])
        return [dict(hour=h, views=len(v), visitors=len(u)) for h, (v, u) in sorted(by.items())]

    def heatmap(self, site, path, kind, frm, to, device):
        cells = defaultdict(Tally)
        for r in self.sel(site, frm, to, device, path=path, types={"click"}):
            w = r["doc_w"] if r["doc_w"] > 0 else r["viewport_w"]
            if w == 0:
                continue
            if kind != "click" and r[kind] != 1:
                continue
            cx = min(max(r["x"], 0) * 100 // w, 99)
            cy = min(max(r["y"], 0) // 20, 65535)
            cells[(cx, cy)].add(self.old(r), r["event_id"])
        return [dict(cx=cx, cy=cy, y_px=cy * 20, n=len(s)) for (cx, cy), s in sorted(cells.items(), key=lambda kv: (kv[0][1], kv[0][0]))]

    def elements(self, site, path, frm, to, device, limit):
        by = defaultdict(lambda: defaultdict(Tally))
        for r in self.sel(site, frm, to, device, path=path, types={"click"}):
            old = self.old(r)
            cell = 255 if r["elem_x"] == 0 and r["elem_y"] == 0 else (r["elem_y"] // 16384) * 4 + r["elem_x"] // 16384
            b = by[r["selector"]]
            b["clicks"].add(old, r["event_id"])
            b[("cell", cell)].add(old, r["event_id"])
            for f in ("rage", "dead", "error"):
                if r[f] == 1:
                    b[f].add(old, r["event_id"])
        out = []
        for sel, b in by.items():
            cells = [len(b.get(("cell", i), ())) for i in range(16)]
            known = sum(cells)
            hx = sum(n * (i % 4 + 0.5) for i, n in enumerate(cells)) / 4 / known if known else 0.0
            hy = sum(n * (i // 4 + 0.5) for i, n in enumerate(cells)) / 4 / known if known else 0.0
            out.append(dict(selector=sel, clicks=len(b["clicks"]), rage_clicks=len(b["rage"]),
                            dead_clicks=len(b["dead"]), error_clicks=len(b["error"]), cells=cells,
                            hot_x=hx, hot_y=hy, unknown_position=len(b.get(("cell", 255), ()))))
        out.sort(key=lambda x: (-x["clicks"], x["selector"]))
        return out[:limit]

    def fold(self, site, path, frm, to, device):
        pairs, new = set(), []
        for r in self.sel(site, frm, to, device, path=path, types={"pageview"}):
            if r["doc_h"] > 0 and r["viewport_h"] > 0:
                f = min(100, r["viewport_h"] * 100 // r["doc_h"])
                if self.old(r):
                    pairs.add((self.okey(r), f))
                else:
                    new.append(f)
        n = len(pairs) + len(new)
        return [dict(measured=n, avg_fold_pct=((sum(f for _, f in pairs) + sum(new)) / n if n else 0.0))]

    def site_totals(self, site, frm, to, device):
        s = self._stats(self.sel(site, frm, to, device, types={"pageview", "click", "engagement"}))
        views, engaged = len(s["views"]), len(s["engaged"])
        bounces = views - min(engaged, views)
        return [dict(views=views, visitors=len(s["visitors"]), engaged=engaged, bounces=bounces,
                     bounce_rate=(bounces / views if views else 0.0), clicks=len(s["clicks"]),
                     rage_clicks=len(s["rage"]), dead_clicks=len(s["dead"]), error_clicks=len(s["error"]))]

    def scroll(self, site, path, frm, to, device):
        deep = defaultdict(int)
        new = defaultdict(int)
        for r in self.sel(site, frm, to, device, path=path, types={"scroll"}):
            if self.old(r):
                deep[self.okey(r)] = max(deep[self.okey(r)], r["scroll_depth"])
            else:
                for b in scroll_buckets(r):
                    new[b] += 1
        reached = {b: sum(1 for v in deep.values() if v >= b) + new[b] for b in range(0, 101, 5)}
        total = reached[0]
        return [dict(depth=b, reached=n, share=(n / total if total else 0.0)) for b, n in reached.items()]


# ---------------------------------------------------------------- comparison


def same(got, want, where):
    if isinstance(want, float):
        g = float(got)
        if not math.isclose(g, want, rel_tol=1e-9, abs_tol=1e-9):
            raise AssertionError(f"{where}: got {got}, want {want}")
    elif isinstance(want, list):
        g = json.loads(got)
        if g != want:
            raise AssertionError(f"{where}: got {got}, want {want}")
    elif isinstance(want, int):
        if int(got) != want:
            raise AssertionError(f"{where}: got {got}, want {want}")
    elif str(got) != str(want):
        raise AssertionError(f"{where}: got {got!r}, want {want!r}")


def compare(name, params, got, want):
    where = f"{name} {params}"
    if len(got) != len(want):
        raise AssertionError(f"{where}: {len(got)} rows, want {len(want)}:\n got  {got}\n want {want}")
    for i, (g, w) in enumerate(zip(got, want)):
        for k, v in w.items():
            if k not in g:
                raise AssertionError(f"{where}: column {k} missing")
            same(g[k], v, f"{where} row {i} column {k}")
    return sum(len(w) for w in want)


# ---------------------------------------------------------------- the run


def apply_file(server, name, version, rerun=False):
    skipped = 0
    for st in statements(render((ROOT / "migrations" / name).read_text(), version)):
        try:
            server.query(st)
        except ServerError as e:
            # 18.16 has no ADD COLUMN IF NOT EXISTS: the runner treats 44 on that ALTER as done
            if e.code == 44 and st.startswith("ALTER TABLE") and "ADD COLUMN" in st and version < (20, 1):
                skipped += 1
                continue
            raise SystemExit(f"{name} failed on:\n{st}\n{e}")
    return skipped


def check_all(server, queries, model, days):
    checked = cells = 0
    first, last = days[0], days[-1]
    ranges = [(first, last)] + [(d, d) for d in days] + [(days[1], last)]
    devices = ["", "mobile", "tablet", "desktop", "unknown", "watch"]
    for site in SITES + [EXACT_SITE, "nosuchsite"]:
        for frm, to in ranges:
            for device in devices:
                for limit in (100, 2):
                    p = dict(site=site, **{"from": frm, "to": to}, device=device, limit=limit)
                    want = model.pages(site, frm, to, device, limit)
                    cells += compare("pages", p, rows(server, bind(queries["pages"], p)), want)
                    checked += 1
                p = dict(site=site, **{"from": frm, "to": to}, device=device)
                cells += compare("site_totals", p, rows(server, bind(queries["site_totals"], p)), model.site_totals(site, frm, to, device))
                checked += 1
                for path in PATHS + [""]:
                    p = dict(site=site, path=path, **{"from": frm, "to": to}, device=device)
                    cells += compare("page_trend", p, rows(server, bind(queries["page_trend"], p)), model.page_trend(site, path, frm, to, device))
                    checked += 1
                    if not path:
                        continue
                    for kind in ("click", "rage", "dead", "error"):
                        p = dict(site=site, path=path, kind=kind, **{"from": frm, "to": to}, device=device, limit=1000000)
                        cells += compare("heatmap", p, rows(server, bind(queries["heatmap"], p)), model.heatmap(site, path, kind, frm, to, device))
                        checked += 1
                    p = dict(site=site, path=path, **{"from": frm, "to": to}, device=device, limit=50)
                    cells += compare("elements", p, rows(server, bind(queries["elements"], p)), model.elements(site, path, frm, to, device, 50))
                    p = dict(site=site, path=path, **{"from": frm, "to": to}, device=device)
                    cells += compare("scroll", p, rows(server, bind(queries["scroll"], p)), model.scroll(site, path, frm, to, device))
                    cells += compare("fold", p, rows(server, bind(queries["fold"], p)), model.fold(site, path, frm, to, device))
                    checked += 3
    return checked, cells


def uniq_exactness(server):
    """uniq = uniqExact up to 65536 distinct ids (through a state merge, as the rollups do);
    relative error above."""
    out = []
    for n in (1, 2, 100, 1000, 10000, 65536):
        got = server.query(f"SELECT uniqMerge(s) FROM (SELECT uniqState(concat('e-', toString(number))) AS s FROM numbers({n}) GROUP BY number % 7)").strip()
        exact = server.query(f"SELECT uniqExact(concat('e-', toString(number))) FROM numbers({n})").strip()
        if got != exact and n <= 10000:
            raise AssertionError(f"uniq not exact at n={n}: {got} vs {exact}")
        out.append((n, int(got), int(exact)))
    for n in (100000, 1000000, 5000000):
        got = int(server.query(f"SELECT uniqMerge(s) FROM (SELECT uniqState(concat('e-', toString(number))) AS s FROM numbers({n}) GROUP BY number % 31)").strip())
        err = (got - n) / n
        if abs(err) > 0.02:
            raise AssertionError(f"uniq error {err:.4f} at n={n}")
        out.append((n, got, n))
    return out


def phases(sql):
    """src/migrate/cutover.rs `phases`: the sections after `-- phase: NAME` lines."""
    parts = re.split(r"^-- phase: (\w+)$", sql, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2]))


def backfill_tables(switch_sql):
    """cutover::backfill_tables: tables partitioned by (toYYYYMM(col), backfill)."""
    return re.findall(r"CREATE TABLE IF NOT EXISTS \{\{db\}\}\.(\w+)\n.*?PARTITION BY \(toYYYYMM\((\w+)\), backfill\)", switch_sql, re.S)


def run_phase(server, sql, version, cutover):
    for st in statements(render(sql.replace("{{cutover}}", f"toDateTime({cutover})"), version)):
        try:
            server.query(st)
        except ServerError as e:
            raise SystemExit(f"a phased migration failed on:\n{st}\n{e}")


def convert(server, ph, version, cutover):
    """cutover::apply step 4: every backfill = 1 partition dropped, then the conversion."""
    dropped = 0
    for table, col in backfill_tables(ph["switch"]):
        for m in server.query(f"SELECT DISTINCT toYYYYMM({col}) FROM {DB}.{table} WHERE backfill = 1", "TSV").split():
            server.query(f"ALTER TABLE {DB}.{table} DROP PARTITION ({m}, 1)")
            dropped += 1
    run_phase(server, ph["convert"], version, cutover)
    return dropped


OLD_NEW = [  # (old table, new table, key, [(old merge, new column)])
    ("click_grid_daily", "click_grid_daily_sum", "site, path, kind, day, device_class, cy, cx", [("uniqMerge(clicks)", "sum(clicks)")]),
    ("element_clicks_daily", "element_clicks_daily_sum", "site, path, day, device_class, selector, ecell",
     [("uniqMerge(clicks)", "sum(clicks)"), ("uniqIfMerge(rage_clicks)", "sum(rage_clicks)"), ("uniqIfMerge(dead_clicks)", "sum(dead_clicks)"), ("uniqIfMerge(error_clicks)", "sum(error_clicks)")]),
    ("scroll_depth_daily", "scroll_depth_daily_sum", "site, path, day, device_class, depth", [("uniqMerge(pageviews)", "sum(pageviews)")]),
    ("engagement_daily", "engagement_daily_sum", "site, path, day, device_class, engaged_s", [("uniqMerge(pageviews)", "sum(pageviews)")]),
    ("fold_daily", "fold_daily_sum", "site, path, day, device_class, fold", [("uniqMerge(pageviews)", "sum(pageviews)")]),
    ("page_stats_hourly", "page_stats_hourly_sum", "site, path, hour, device_class",
     [("uniqIfMerge(views)", "sumMerge(views)"), ("uniqIfMerge(visitors)", "uniqIfMerge(visitors)"), ("uniqIfMerge(engaged)", "uniqIfMerge(engaged)"), ("uniqIfMerge(clicks)", "sumMerge(clicks)"), ("uniqIfMerge(error_clicks)", "sumMerge(error_clicks)")]),
    ("pages_daily", "pages_daily_sum", "site, day, device_class, path",
     [("uniqIfMerge(views)", "sumMerge(views)"), ("uniqIfMerge(visitors)", "uniqIfMerge(visitors)"), ("uniqIfMerge(engaged)", "uniqIfMerge(engaged)"), ("uniqIfMerge(rage_clicks)", "sumMerge(rage_clicks)"),
      ("uniqIfMerge(scrolled)", "sumMerge(scrolled)"), ("uniqArrayMerge(scroll_steps)", "sumMerge(scroll_steps)"), ("uniqIfForEachMerge(engaged_reached)", "sumForEachMerge(engaged_reached)")]),
]


def conversion_equals_old_sets(server):
    """Every key of every old rollup: its backfill = 1 rows in the new table give the old set's
    count (and the copied states the same distinct counts). Returns the keys compared."""
    keys = 0
    for old, new, key, cols in OLD_NEW:
        o = server.query(f"SELECT {key}, {', '.join(m for m, _ in cols)} FROM {DB}.{old} GROUP BY {key} ORDER BY {key}", "TSV")
        n = server.query(f"SELECT {key}, {', '.join(c for _, c in cols)} FROM {DB}.{new} WHERE backfill = 1 GROUP BY {key} ORDER BY {key}", "TSV")
        # rows whose counts are all 0 are not converted (SummingMergeTree drops them anyway)
        o_lines = [line for line in o.splitlines() if any(v not in ("0", "[]") and not re.fullmatch(r"\[0(,0)*\]", v) for v in line.split("\t")[len(key.split(",")):])]
        if new.endswith("_sum") and not new.startswith("page"):
            o = "\n".join(o_lines)
        if o.strip() != n.strip():
            raise AssertionError(f"{new}: the conversion differs from {old}:\n{o[:2000]}\n---\n{n[:2000]}")
        keys += len(n.splitlines())
    return keys


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--http", help="URL of a ClickHouse server (else chDB in-process)")
    ap.add_argument("--version", help="server version MAJOR.MINOR for the rendering (default: asked)")
    args = ap.parse_args()
    server = Http(args.http) if args.http else Chdb()
    full = server.query("SELECT version()").strip()
    version = tuple(int(p) for p in (args.version or full).split(".")[:2])
    print(f"server {full}, rendering for {version[0]}.{version[1]}")
    t0 = time.time()

    queries = load_queries()
    assert set(queries) == {"pages", "page_trend", "heatmap", "elements", "scroll", "fold", "site_totals"}, sorted(queries)

    server.query(f"DROP DATABASE IF EXISTS {DB}")
    server.query(f"CREATE DATABASE {DB}")
    apply_file(server, "0001_create_events.sql", version)

    events, rnd = generate()
    rnd.shuffle(events)
    n = len(events)
    pre, post_new, post_old, last = events[: n // 3], events[n // 3: n // 2], events[n // 2: 2 * n // 3], events[2 * n // 3:]
    late, after, final = last[: len(last) // 3], last[len(last) // 3: 2 * len(last) // 3], last[2 * len(last) // 3:]
    # The cutover: far enough ahead that every row this test stamps by default (now()) is before
    # it; rows after it are stamped explicitly.
    cutover = int(server.query("SELECT toUInt32(now()) + 86400").strip())
    stored = {}
    n_new = [0]

    def put(evs, level, inserted_at=None):
        insert(server, evs, level, inserted_at)
        new_side = inserted_at is not None and inserted_at >= cutover
        for e in evs:
            if new_side:  # a sum counts every row: each gets its own entry
                n_new[0] += 1
                stored[(e["event_id"], n_new[0])] = effective(e, level, True)
            else:
                stored.setdefault(e["event_id"], effective(e, level, False))

    # 1. rows present before 0002, a duplicate block of some of them
    put(pre[: len(pre) // 2], 0)
    put(pre[len(pre) // 2:], 0)
    put(pre[::5], 0)
    # 2. the migration: views, then backfill
    apply_file(server, "0002_analytics.sql", version)
    apply_file(server, "0003_fold.sql", version)
    apply_file(server, "0004_pages_daily.sql", version)
    # 3. new-format and old-format inserts, duplicates (also of pre rows) in separate blocks
    put(post_new, 1)
    put(post_old, 0)
    put(post_new[::3], 1)
    put(pre[1::4], 0)
    # 4. the migration again
    skipped = apply_file(server, "0002_analytics.sql", version)
    apply_file(server, "0003_fold.sql", version, rerun=True)
    apply_file(server, "0004_pages_daily.sql", version, rerun=True)
    apply_file(server, "0005_event_from.sql", version)
    # 5. 0006, as src/migrate/cutover.rs runs it: the switch ...
    ph = phases((ROOT / "migrations" / "0006_sum_rollups.sql").read_text())
    assert set(ph) == {"switch", "convert", "finish"}, sorted(ph)
    run_phase(server, ph["switch"], version, cutover)
    # ... rows stamped before the cutover that commit after the switch (a sink's batch in
    # flight; duplicates of it too: the old rollups are sets), rows stamped after it (half from
    # collectors not yet sending `from`) ...
    put(late, 2, cutover - 60)
    put(late[::4], 2, cutover - 60)
    put(after[::2], 2, cutover)
    put(after[1::2], 1, cutover + 30)
    # ... the conversion, twice (a rerun doubles nothing) ...
    convert(server, ph, version, cutover)
    keys = conversion_equals_old_sets(server)
    dropped = convert(server, ph, version, cutover)
    assert dropped > 0, "the rerun found no backfill partition to drop"
    assert keys == conversion_equals_old_sets(server)
    print(f"conversion: {keys} keys equal the old sets' counts, also after a rerun ({dropped} backfill partitions dropped)")
    # ... and the finish. Rows stamped after the cutover keep coming.
    run_phase(server, ph["finish"], version, cutover)
    put(final[: len(final) // 2], 2, cutover + 100)
    # 0007 (site_daily) the same way, its conversion twice; rows keep coming between the switch
    # and the conversion (in both its view and pages_daily_sum: sets, so counted once) and after.
    ph7 = phases((ROOT / "migrations" / "0007_site_daily.sql").read_text())
    assert set(ph7) == {"switch", "convert", "finish"}, sorted(ph7)
    assert backfill_tables(ph7["switch"]) == [("site_daily", "day")], backfill_tables(ph7["switch"])
    run_phase(server, ph7["switch"], version, cutover + 150)
    put(final[len(final) // 2:], 2, cutover + 150)
    convert(server, ph7, version, cutover + 150)
    assert convert(server, ph7, version, cutover + 150) > 0, "the 0007 rerun found no backfill partition to drop"
    run_phase(server, ph7["finish"], version, cutover + 150)
    # 0008 drops site_daily again (site_totals merges pages_daily_sum's states); twice, as a
    # rerun after a crash before its record would.
    apply_file(server, "0008_drop_site_daily.sql", version)
    apply_file(server, "0008_drop_site_daily.sql", version)
    left = server.query(f"SELECT count() FROM system.tables WHERE database = '{DB}' AND name LIKE 'site_daily%'").strip()
    assert left == "0", f"0008 left {left} site_daily table(s)"
    # A site whose page views send scroll and engagement several times with `from`, all after
    # the cutover: the sums give exactly the per-page-view truth.
    exact, _ = generate(seed=14, sites=[EXACT_SITE], n_pageviews=120, new_snippet_share=1.0)
    rnd.shuffle(exact)
    put(exact[: len(exact) // 2], 2, cutover + 5)
    put(exact[len(exact) // 2:], 2, cutover + 200)
    multi = sum(1 for e in exact if e["type"] in ("scroll", "engagement") and (e.get("depth_from") or e.get("duration_from_ms")))
    assert multi > 20, multi

    distinct = int(server.query(f"SELECT uniqExact(event_id) FROM {DB}.events").strip())
    raw = int(server.query(f"SELECT count() FROM {DB}.events").strip())
    assert distinct == len({k[0] if isinstance(k, tuple) else k for k in stored}), (distinct, len(stored))
    print(f"events: {distinct} distinct, {raw} rows stored (duplicates included), {n_new[0]} after the cutover "
          f"({multi} sends with `from`); 0002 rerun skipped {skipped} ALTER(s)")

    # device_class of the pre rows comes from the DEFAULT, on read
    dc = server.query(f"SELECT countIf(device_class != multiIf(viewport_w = 0, 'unknown', viewport_w < 768, 'mobile', viewport_w < 1024, 'tablet', 'desktop')) FROM {DB}.events").strip()
    assert dc == "0", dc

    model = Model(stored)
    # the sums equal the per-page-view truth where every send arrived once with `from`
    truth = Model({k: r for k, r in stored.items() if r["site"] == EXACT_SITE}, as_sets=True)
    days = sorted({r["ts"].date().isoformat() for r in stored.values()})
    # (over the whole range: a range cut between two sends of one page view counts each send
    # in its own day, docs/queries.md)
    for frm, to in [(days[0], days[-1])]:
        for device in ("", "mobile", "desktop"):
            assert model.pages(EXACT_SITE, frm, to, device, 100) == truth.pages(EXACT_SITE, frm, to, device, 100)
            for path in PATHS:
                assert model.scroll(EXACT_SITE, path, frm, to, device) == truth.scroll(EXACT_SITE, path, frm, to, device)
    checked, cells = check_all(server, queries, model, days)
    print(f"queries: {checked} runs, {cells} cells matched")
    tables = ("click_grid_daily", "element_clicks_daily", "scroll_depth_daily", "engagement_daily", "page_stats_hourly", "fold_daily", "pages_daily")
    for t in tables:
        server.query(f"OPTIMIZE TABLE {DB}.{t} FINAL")
        server.query(f"OPTIMIZE TABLE {DB}.{t}_sum FINAL")
    server.query(f"OPTIMIZE TABLE {DB}.events FINAL")
    checked2, cells2 = check_all(server, queries, model, days)
    print(f"after OPTIMIZE FINAL: {checked2} runs, {cells2} cells matched")
    sizes = server.query(f"SELECT table, sum(rows) FROM system.parts WHERE database = '{DB}' AND active GROUP BY table ORDER BY table", "TSV")
    print("rows per table:", " ".join(sizes.split()))

    for n, got, exact in uniq_exactness(server):
        print(f"uniq_error n={n}: uniq={got} exact={exact} rel={(got - exact) / exact:+.5f}")
    print(f"OK in {time.time() - t0:.1f} s")


if __name__ == "__main__":
    main()
