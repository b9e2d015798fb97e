"""Independent reader for the Parquet archive (pyarrow, not our code): prints the schema
types that matter and every row's key fields, sorted, for the Rust test to compare."""
import sys

import pyarrow.dataset as ds

root = sys.argv[1]
dataset = ds.dataset(f"{root}/events", format="parquet", partitioning="hive")
table = dataset.to_table()
schema = table.schema
print(f"schema ts={schema.field('ts').type} received_at={schema.field('received_at').type} rage={schema.field('rage').type} date={schema.field('date').type}")
cols = table.select(["event_id", "ts", "x", "y", "scroll_depth", "rage", "path", "date"]).to_pydict()
rows = []
for i in range(table.num_rows):
    ts_ms = int(cols["ts"][i].timestamp() * 1000 + 0.5)
    rows.append(
        f"{cols['event_id'][i]}\t{ts_ms}\t{cols['x'][i]}\t{cols['y'][i]}\t"
        f"{cols['scroll_depth'][i]}\t{int(cols['rage'][i])}\t{cols['path'][i]}\t{cols['date'][i]}"
    )
rows.sort()
print(f"rows {len(rows)}")
sys.stdout.write("\n".join(rows) + "\n")
