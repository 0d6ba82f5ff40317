#!/bin/bash
# Weakens one spot of the ring source, runs every loom model, prints which failed
# and how, then restores the source with `git checkout`. Commit your work first.
#
# usage: scripts/weaken.sh NAME FILE OLD NEW
#   FILE relative to the repository root; OLD must occur exactly once in it.
#   LOOM_MAX_PREEMPTIONS defaults to 2.
set -u
loom_dir=$(cd "$(dirname "$0")/.." && pwd)
repo=$(dirname "$loom_dir")
name=$1; file=$2
cd "$repo"
python3 - "$file" "$3" "$4" <<'PY'
import sys
path, old, new = sys.argv[1:4]
text = open(path).read()
assert text.count(old) == 1, "pattern occurs %d times" % text.count(old)
print("line", text[:text.index(old)].count("\n") + 1)
open(path, "w").write(text.replace(old, new))
PY
echo "=== $name ($file)"
git diff -U0 -- src | grep -E "^[-+@]" | grep -v "^[-+]{3}"
cd "$loom_dir"
LOOM_MAX_PREEMPTIONS=${LOOM_MAX_PREEMPTIONS:-2} CARGO_TARGET_DIR=target \
    timeout 2400 cargo test --release --no-fail-fast > target/weaken.log 2>&1
python3 scripts/summarize_loom_log.py target/weaken.log
cd "$repo" && git checkout -q -- src
