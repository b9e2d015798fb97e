#!/usr/bin/env python3
"""Chaos soak: load while the collector is killed -9 and ClickHouse is stopped and started.

    scripts/chaos.py [--seconds 600] [--bin target/release/clicktrail] [--json]

What it does, all on loopback with a private ClickHouse 18.16 (scripts/clickhouse.sh) and the
real collector binary:
  * N client threads post batches of events with unique ids, as the snippet does: a batch that
    was not answered 200 is resent as it was (same ids) until it is; a 200 acknowledges its ids.
  * every 20-40 s the collector is killed with SIGKILL (mid-request, mid-insert, wherever it is)
    and started again on the same data directory and port;
  * at random moments (every 25-60 s) ClickHouse is stopped (a clean shutdown: inserts under
    way fail) for 3-15 s, then started again; the collector keeps acknowledging into its spool.
At the end the load stops, both are up, the spool drains, and every acknowledged id must be in
`events FINAL` exactly once (lost = acknowledged but absent; duplicates = more than one row
under FINAL). And no row may have reached ClickHouse twice (a batch resent after a crash, or a
client resend of an acknowledged batch whose answer was lost), since plain-sum rollups would
count it twice: `inserted_twice` counts the ids a materialized view saw more than once (it
counts every inserted row at insert time, as a sum rollup does, so merges cannot hide one),
and `stored_twice` the ids with more than one raw row (count() vs uniqExact(event_id) without
FINAL; merges may have folded some of those).

Exit status 0 when nothing acknowledged was lost and no id was stored or inserted twice. The
figures (acknowledged, crashes, outages, lost, duplicates) are printed, and as JSON with --json.
`make bench` runs 10 minutes; `make test` a bounded 75 s (scripts/test-chaos.sh).
"""
import argparse
import http.client
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CH = ROOT / "scripts" / "clickhouse.sh"
ORIGIN = "https://chaos.test"


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def log(msg):
    print(f"chaos {time.strftime('%H:%M:%S')}: {msg}", flush=True)


class ClickHouse:
    def __init__(self, dir):
        self.dir, self.http, self.tcp = dir, free_port(), free_port()
        self.outages = 0

    def start(self):
        subprocess.run([str(CH), "start", self.dir, str(self.http), str(self.tcp)], check=True,
                       stdout=subprocess.DEVNULL)

    def stop(self):
        subprocess.run([str(CH), "stop", self.dir], check=True, stdout=subprocess.DEVNULL)

    def query(self, sql):
        req = urllib.request.Request(f"http://127.0.0.1:{self.http}/", data=sql.encode())
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.read().decode()


class Collector:
    def __init__(self, bin, dir, ch):
        self.bin, self.dir, self.port = bin, Path(dir), free_port()
        self.proc, self.crashes = None, 0
        self.config = self.dir / "clicktrail.toml"
        self.config.write_text(f"""
listen = "127.0.0.1:{self.port}"
data_dir = "{self.dir / 'data'}"

[clickhouse]
url = "http://127.0.0.1:{ch.http}"

[rate_limit]
# The soak's clients all come from 127.0.0.1.
per_ip_per_second = 0
per_site_per_second = 0

[compactor]
enabled = false

[[sites]]
key = "chaos"
origins = ["{ORIGIN}"]
""")
        self.logfile = open(self.dir / "collector.log", "ab")

    def migrate(self):
        subprocess.run([self.bin, "--config", str(self.config), "migrate", "--no-insert-wait"], check=True,
                       stdout=self.logfile, stderr=self.logfile)

    def start(self):
        self.proc = subprocess.Popen([self.bin, "--config", str(self.config), "serve"],
                                     stdout=self.logfile, stderr=self.logfile)
        deadline = time.time() + 30
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"collector exited with {self.proc.returncode}; see {self.dir}/collector.log")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=1):
                    return
            except OSError:
                time.sleep(0.05)
        raise SystemExit("collector did not answer /healthz within 30 s")

    def kill9(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.crashes += 1

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


class Client(threading.Thread):
    """Posts batches until told to stop; a batch is resent until it is answered 200."""

    def __init__(self, n, port, batch, stop):
        super().__init__(daemon=True)
        self.n, self.port, self.batch, self.stop = n, port, batch, stop
        self.acked, self.rejected, self.attempts, self.errors = [], 0, 0, 0

    def run(self):
        conn = None
        while not self.stop.is_set():
            ids = [uuid.uuid4().hex for _ in range(self.batch)]
            now = int(time.time() * 1000)
            body = json.dumps({"site": "chaos", "events": [
                {"type": "click", "id": i, "ts": now, "url": f"{ORIGIN}/p/{self.n}",
                 "session": f"s{self.n}", "visitor": f"v{self.n}", "x": 1, "y": 2, "selector": "#b"}
                for i in ids]})
            while not self.stop.is_set():
                self.attempts += 1
                try:
                    if conn is None:
                        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                    conn.request("POST", "/v1/events", body, {"Content-Type": "text/plain", "Origin": ORIGIN})
                    r = conn.getresponse()
                    answer = r.read()
                    if r.status == 200:
                        a = json.loads(answer)
                        if a.get("accepted") != len(ids):
                            self.rejected += len(ids) - a.get("accepted", 0)
                        self.acked.extend(ids)
                        break
                    # 503 (spool busy or failed) and 429: resend after the pause asked for.
                    time.sleep(min(float(r.getheader("Retry-After") or 0.2), 1.0))
                except (OSError, http.client.HTTPException):
                    self.errors += 1
                    conn = None
                    time.sleep(0.05)
            # An unanswered batch at the stop is simply not acknowledged (it may land or not).


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=600)
    ap.add_argument("--bin", default=str(ROOT / "target" / "release" / "clicktrail"))
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--batch", type=int, default=50)
    ap.add_argument("--kill-every", default="20,40", help="seconds between kill -9, min,max")
    ap.add_argument("--outage-every", default="25,60", help="seconds between ClickHouse stops, min,max")
    ap.add_argument("--outage-for", default="3,15", help="seconds ClickHouse stays down, min,max")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep the run directory")
    args = ap.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    rnd = random.Random(seed)
    span = lambda s: tuple(float(v) for v in s.split(","))  # noqa: E731
    kill_every, outage_every, outage_for = span(args.kill_every), span(args.outage_every), span(args.outage_for)
    if not os.access(args.bin, os.X_OK):
        raise SystemExit(f"collector binary {args.bin} not found: build it (cargo build --release) or pass --bin")

    run = tempfile.mkdtemp(prefix="clicktrail-chaos.")
    ch = ClickHouse(os.path.join(run, "ch"))
    col = Collector(args.bin, run, ch)
    log(f"run directory {run}, seed {seed}, {args.seconds:.0f} s, collector on :{col.port}, ClickHouse on :{ch.http}")
    ok = False
    try:
        ch.start()
        col.migrate()
        # Every row ClickHouse takes, counted per id at insert time (a SummingMergeTree sums what
        # merges fold): what a plain-sum rollup would count.
        ch.query("CREATE MATERIALIZED VIEW default.chaos_inserted ENGINE = SummingMergeTree() "
                 "ORDER BY event_id AS SELECT event_id, toUInt64(1) AS n FROM clicktrail.events "
                 "WHERE site = 'chaos'")
        col.start()
        stop = threading.Event()
        clients = [Client(n, col.port, args.batch, stop) for n in range(args.clients)]
        for c in clients:
            c.start()
        t0 = time.time()
        end = t0 + args.seconds
        next_kill = t0 + rnd.uniform(*kill_every)
        next_outage = t0 + rnd.uniform(*outage_every)
        ch_back = None
        while time.time() < end:
            now = time.time()
            if ch_back and now >= ch_back:
                ch.start()
                ch_back = None
                log("ClickHouse started again")
            if now >= next_kill:
                col.kill9()
                log(f"collector killed -9 ({col.crashes}); {sum(len(c.acked) for c in clients)} acknowledged so far")
                time.sleep(rnd.uniform(0, 1.5))
                col.start()
                next_kill = time.time() + rnd.uniform(*kill_every)
            if ch_back is None and now >= next_outage:
                ch.stop()
                ch.outages += 1
                down = rnd.uniform(*outage_for)
                ch_back = time.time() + down
                next_outage = ch_back + rnd.uniform(*outage_every)
                log(f"ClickHouse stopped ({ch.outages}) for {down:.1f} s")
            time.sleep(0.1)
        stop.set()
        for c in clients:
            c.join(timeout=30)
        if ch_back:
            ch.start()
        acked = [i for c in clients for i in c.acked]
        rejected = sum(c.rejected for c in clients)
        log(f"load stopped: {len(acked)} acknowledged; waiting for every one to be queryable")

        # Drain: the collector inserts its spool; wait until every acknowledged id is there.
        ch.query("CREATE TABLE IF NOT EXISTS default.chaos_acked (event_id String) ENGINE = Memory")
        ch.query("TRUNCATE TABLE default.chaos_acked")
        for i in range(0, len(acked), 50000):
            ch.query("INSERT INTO default.chaos_acked FORMAT TSV\n" + "\n".join(acked[i:i + 50000]) + "\n")
        deadline = time.time() + 180
        missing = len(acked)
        while time.time() < deadline:
            missing = int(ch.query("SELECT count() FROM default.chaos_acked WHERE event_id NOT IN "
                                   "(SELECT event_id FROM clicktrail.events WHERE site = 'chaos')").strip())
            if missing == 0:
                break
            time.sleep(1)
        col.stop()
        dup_final = int(ch.query("SELECT count() FROM (SELECT event_id, count() AS n FROM clicktrail.events FINAL "
                                 "WHERE site = 'chaos' GROUP BY event_id HAVING n > 1)").strip())
        stored_twice = int(ch.query("SELECT count() FROM (SELECT event_id, count() AS n FROM clicktrail.events "
                                    "WHERE site = 'chaos' GROUP BY event_id HAVING n > 1)").strip())
        rows, unique = (int(v) for v in ch.query(
            "SELECT count(), uniqExact(event_id) FROM clicktrail.events WHERE site = 'chaos' "
            "FORMAT TSV").split())
        inserted_twice, inserted_extra = (int(v) for v in ch.query(
            "SELECT countIf(s > 1), sum(s - 1) FROM (SELECT event_id, sum(n) AS s "
            "FROM default.chaos_inserted GROUP BY event_id) FORMAT TSV").split())
        figures = dict(seconds=round(time.time() - t0), acknowledged=len(acked), rejected=rejected,
                       crashes=col.crashes, clickhouse_outages=ch.outages, lost=missing,
                       duplicates=dup_final, stored_twice=stored_twice, rows_stored=rows,
                       raw_extra_rows=rows - unique, inserted_twice=inserted_twice,
                       inserted_extra_rows=inserted_extra,
                       attempts=sum(c.attempts for c in clients), failed_attempts=sum(c.errors for c in clients),
                       seed=seed)
        ok = (missing == 0 and dup_final == 0 and rejected == 0 and len(acked) > 0
              and stored_twice == 0 and rows == unique and inserted_twice == 0)
        log(("OK " if ok else "FAILED ") + " ".join(f"{k}={v}" for k, v in figures.items()))
        if args.json:
            print(json.dumps(figures))
    finally:
        col.stop()
        try:
            ch.stop()
        except Exception:  # noqa: BLE001 - best effort on the way out
            pass
        if ok and not args.keep:
            subprocess.run(["rm", "-rf", run])
        else:
            log(f"run directory kept: {run}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
