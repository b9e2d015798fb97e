#!/bin/sh
# Fail if the served snippet is over its size budget: 2560 bytes after gzip -9 (what a
# compressing proxy or CDN would send).
# Usage: snippet/check-size.sh [FILE] (default: dist/clicktrail.min.js next to this script)
set -eu
file="${1:-$(dirname "$0")/dist/clicktrail.min.js}"
budget=2560
[ -f "$file" ] || { echo "check-size: $file not found (build it: cd snippet && node build.mjs)" >&2; exit 1; }
raw=$(wc -c < "$file" | tr -d ' ')
gz=$(gzip -9 -n < "$file" | wc -c | tr -d ' ')   # -n: no file name or time in the header, as over HTTP
if [ "$gz" -gt "$budget" ]; then
  echo "check-size: FAIL $file is $gz bytes gzipped (raw $raw), budget $budget" >&2
  exit 1
fi
echo "check-size: ok $file is $gz bytes gzipped (raw $raw), budget $budget"
