"""Applies the SQL printed by `clicktrail migrate --print-sql` (stdin) to an in-process
ClickHouse 26.x (chDB) and checks the result, so every migration is proven on current
releases too. Exit code 0 = every statement ran and the schema is usable."""
import sys
import tempfile

from chdb import session

sql = sys.stdin.read()
statements = []
for chunk in sql.split(";\n"):
    lines = [l for l in chunk.splitlines() if l.strip() and not l.strip().startswith("--")]
    if lines:
        statements.append("\n".join(lines))

with tempfile.TemporaryDirectory() as d:
    s = session.Session(d)
    for st in statements:
        try:
            s.query(st)
        except Exception as e:  # chDB raises on any server error
            print(f"FAILED on chDB:\n{st}\n{e}", file=sys.stderr)
            sys.exit(1)
    version = str(s.query("SELECT version()", "TSV")).strip()
    applied = str(s.query("SELECT count() FROM clicktrail.schema_migrations", "TSV")).strip()
    # The sink's insert (same column list as the Event row) must work, and a resent identical
    # block must be deduplicated by the table setting.
    cols = sys.argv[1]
    insert = (
        f"INSERT INTO clicktrail.events ({cols}) SELECT * FROM generateRandom('"
        + sys.argv[2]
        + "', 1, 10, 2) LIMIT 5"
    )
    s.query(insert)
    rows = str(s.query("SELECT count() FROM clicktrail.events", "TSV")).strip()
    print(f"chdb version={version} migrations={applied} rows={rows}")
