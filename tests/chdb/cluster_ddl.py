"""Checks the ON CLUSTER schema (`clicktrail migrate --print-sql --server-version 26.1 --cluster
clicktrail`, on stdin) against ClickHouse 26.x
in-process (chDB), as far as chDB allows:

- every statement, ON CLUSTER included, parses (formatQuery);
- without ON CLUSTER (clickhouse-local refuses distributed DDL: code 392 QUERY_IS_PROHIBITED,
  "Replicated DDL queries are disabled"), the database, a stand-in events_local (the Replicated
  engine needs ZooKeeper, and in chDB a replicated table stays read-only even with one) and the
  Distributed `events` over a configured cluster are created, and `events` has the sharding key;
- the settings the sink and compactor use on a cluster exist under these names
  (distributed_foreground_insert, its old name insert_distributed_sync, skip_unavailable_shards,
  alter_sync, mutations_sync, distributed_ddl_task_timeout).

The behaviour itself (sharding, replication, dedup of a resent block, ON CLUSTER DELETE, dead
replicas and shards) is proven on real 18.16 servers by scripts/cluster-proof.sh.

Usage: clicktrail migrate --print-sql --server-version 26.1 --cluster clicktrail | python3 tests/chdb/cluster_ddl.py
(or a file name instead of stdin); exit 0 = all good.
"""
import os
import re
import sys
import tempfile

import chdb

here = os.path.dirname(os.path.abspath(__file__))
# The plan of `clicktrail migrate --print-sql --server-version 26.1 --cluster clicktrail`.
src = sys.argv[1] if len(sys.argv) > 1 else "-"
sql = sys.stdin.read() if src == "-" else open(src).read()
# The cutover of 0006 shows as a query parameter (the runner fills it in): any instant parses.
sql = sql.replace("{cutover:DateTime}", "toDateTime(1)")
statements, cur = [], []
for line in sql.splitlines():
    t = line.strip()
    if not t or t.startswith("--"):
        continue
    cur.append(line)
    if t.endswith(";"):
        statements.append("\n".join(cur).strip().rstrip(";"))
        cur = []
assert not cur, "statement without a closing ;"
assert len(statements) > 10, f"expected the whole plan, got {len(statements)} statements"
assert all(s.startswith("INSERT INTO") or " ON CLUSTER clicktrail" in s for s in statements), \
    "every DDL statement must be ON CLUSTER"

CONFIG = """<clickhouse>
  <remote_servers><clicktrail>
    <shard><internal_replication>true</internal_replication><replica><host>127.0.0.1</host><port>1</port></replica></shard>
    <shard><internal_replication>true</internal_replication><replica><host>127.0.0.1</host><port>2</port></replica></shard>
  </clicktrail></remote_servers>
  <macros><shard>01</shard><replica>chdb</replica></macros>
</clickhouse>
"""

failed = False
with tempfile.TemporaryDirectory() as d:
    cfg = os.path.join(d, "config.xml")
    with open(cfg, "w") as f:
        f.write(CONFIG)
    conn = chdb.connect(f"file:{d}/db?config-file={cfg}")
    c = conn.cursor()

    def q(s):
        c.execute(s)
        return c.fetchall()

    def check(what, fn):
        global failed
        try:
            r = fn()
            print(f"ok   {what}" + (f": {r}" if r is not None else ""))
        except Exception as e:  # chDB raises on any server error
            failed = True
            print(f"FAIL {what}: {str(e)[:500]}", file=sys.stderr)

    version = q("SELECT version()")[0][0]
    for s in statements:
        lit = "'" + s.replace("\\", "\\\\").replace("'", "\\'") + "'"
        check("parses: " + s.splitlines()[0][:70], lambda lit=lit: (q(f"SELECT formatQuery({lit})"), None)[1])

    # Without ON CLUSTER, replicated engines as their plain stand-ins; backfills (INSERT ...
    # SELECT through the Distributed tables, whose shards are not there) only parse.
    for s in statements:
        local = re.sub(r" ON CLUSTER clicktrail", "", s)
        local = re.sub(r"Replicated(\w*)MergeTree\('[^']*', '[^']*'\)", r"\1MergeTree()", local)
        if local.startswith("INSERT INTO") and "SELECT" in local:
            continue
        check("runs: " + local.splitlines()[0][:70], lambda local=local: (q(local), None)[1])

    def engine():
        e = q("SELECT engine_full FROM system.tables WHERE database = 'clicktrail' AND name = 'events'")[0][0]
        assert "cityHash64(site, session_id)" in e, e
        return e

    check("events is Distributed by cityHash64(site, session_id)", engine)

    def settings():
        rows = dict(
            (n, a)
            for n, a in q(
                "SELECT name, alias_for FROM system.settings WHERE name IN ('distributed_foreground_insert', "
                "'insert_distributed_sync', 'skip_unavailable_shards', 'alter_sync', 'mutations_sync', "
                "'distributed_ddl_task_timeout', 'distributed_group_by_no_merge', 'wait_end_of_query')"
            )
        )
        assert len(rows) >= 7, rows
        return rows

    check("settings exist", settings)
    conn.close()

print(f"chdb version={version}")
sys.exit(1 if failed else 0)
