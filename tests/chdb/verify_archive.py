"""Independent check of the archive's content checksums: ClickHouse 26.x (chDB) reads every
published Parquet file and computes `count()` and `sum(cityHash64(every column))`, which must
equal what the manifest recorded from ClickHouse 18.16's own rows. Prints one line per part;
exits 1 on any mismatch."""
import json
import pathlib
import sys

import chdb

# The row hash over the file's columns, from the row table (clicktrail's
# compactor::archive_sql_row_hash(), the query docs/archive.md shows).
HASH = sys.argv[2]

root = pathlib.Path(sys.argv[1])
bad = 0
for entry in sorted((root / "manifest").rglob("*.json")):
    m = json.loads(entry.read_text())
    path = root / m["file"]
    rows, total = str(chdb.query(f"SELECT count(), sum({HASH}) FROM file('{path}', Parquet)", "TSV")).split()
    ok = int(rows) == m["rows"] and total == m["checksum"]
    bad += not ok
    print(f"{'ok' if ok else 'MISMATCH'} {m['file']} rows={rows}/{m['rows']} checksum={total}/{m['checksum']}")
sys.exit(1 if bad else 0)
