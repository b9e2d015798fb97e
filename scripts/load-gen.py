"""Posts page views through one URL (haproxy) from several threads for a while and writes the
ids of every acknowledged event (HTTP 200, all accepted) to a file, one a line.

    python3 scripts/load-gen.py URL SECONDS THREADS OUT_FILE [PREFIX] [EVENTS_PER_POST]

Sessions: 400 per run, spread over the posts, so the Distributed table's cityHash64(site,
session_id) spreads them over the shards. Prints one JSON line of totals at the end.
"""
import http.client
import json
import sys
import threading
import time
import urllib.parse

url, seconds, threads, out = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
prefix = sys.argv[5] if len(sys.argv) > 5 else "load"
per_post = int(sys.argv[6]) if len(sys.argv) > 6 else 20
u = urllib.parse.urlsplit(url)
lock = threading.Lock()
acked, statuses = [], {}
deadline = time.time() + seconds


def worker(t):
    conn, seq = None, 0
    while time.time() < deadline:
        ids = [f"{prefix}-{t}-{seq}-{i}" for i in range(per_post)]
        now = int(time.time() * 1000)
        body = json.dumps({"site": "demo", "events": [
            {"type": "pageview", "id": e, "ts": now, "url": f"https://shop.example/p{(seq + i) % 7}",
             "session": f"{prefix}-s{(t * 7919 + seq) % 400}", "visitor": f"v{(t * 7919 + seq) % 400}",
             "title": "t", "referrer": ""} for i, e in enumerate(ids)]})
        seq += 1
        try:
            if conn is None:
                conn = http.client.HTTPConnection(u.hostname, u.port, timeout=20)
            conn.request("POST", "/v1/events", body, {"Content-Type": "text/plain",
                                                      "X-Forwarded-For": "203.0.113.7"})
            r = conn.getresponse()
            data = r.read()
            status = r.status
            ok = status == 200 and json.loads(data).get("accepted") == per_post
        except Exception as e:  # a connection reset while a collector dies: not acknowledged
            status, ok = type(e).__name__, False
            conn = None
        with lock:
            statuses[str(status)] = statuses.get(str(status), 0) + 1
            if ok:
                acked.extend(ids)


ts = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
start = time.time()
for t in ts:
    t.start()
for t in ts:
    t.join()
elapsed = time.time() - start
with open(out, "w") as f:
    f.write("".join(i + "\n" for i in acked))
print(json.dumps({"acked": len(acked), "seconds": round(elapsed, 1),
                  "events_per_s": round(len(acked) / elapsed), "statuses": statuses}))
