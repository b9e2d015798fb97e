"""Applies the SQL printed by `clicktrail migrate --print-sql` (stdin) to an in-process
ClickHouse 26.x (chDB) and checks the result, so every migration is proven on current
releases too. Exit code 0 = every statement ran, `DESCRIBE TABLE events` shows exactly the
expected columns (argv[2], JSON [[name, type], ...], from the row table in src/row.rs) and
an insert of the sink's column list (argv[1]) works and is deduplicated when resent."""
import json
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
    expected = [tuple(c) for c in json.loads(sys.argv[2])]
    described = [
        tuple(line.split("\t")[:2])
        for line in str(s.query("DESCRIBE TABLE clicktrail.events", "TabSeparatedRaw")).strip().splitlines()
    ]
    if described != expected:
        print(f"DESCRIBE differs from the row table:\n got  {described}\n want {expected}", file=sys.stderr)
        sys.exit(1)
    inserted = [c.strip() for c in cols.split(",")]
    types = dict(expected)
    # generateRandom takes its structure inside a quoted string: DateTime without its zone.
    plain = {c: t.replace("('UTC')", "") for c, t in types.items()}
    structure = ", ".join(f"{c} {plain[c]}" for c in inserted)
    insert = (
        f"INSERT INTO clicktrail.events ({cols}) SELECT * FROM generateRandom('"
        + structure
        + "', 1, 10, 2) LIMIT 5"
    )
    s.query(insert)
    rows = str(s.query("SELECT count() FROM clicktrail.events", "TSV")).strip()
    print(f"chdb version={version} migrations={applied} rows={rows}")
