#!/usr/bin/env bash
# The cost of auditing on the token endpoint (the budget is 20%): bench/token.sh on this
# commit as it is, and on the same commit with bench/no-audit.patch applied (the audit
# writer answers at once and keeps nothing), built in a scratch worktree.
# Usage: bench/audit-cost.sh [seconds per scenario, default 10]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
duration=${1:-10}
scratch=$(mktemp -d)
cleanup() { git -C "$root" worktree remove --force "$scratch/tree" >/dev/null 2>&1 || true; rm -rf "$scratch"; }
trap cleanup EXIT
git -C "$root" worktree add --detach "$scratch/tree" HEAD >/dev/null
git -C "$scratch/tree" apply "$root/bench/no-audit.patch"
# Share the compiled dependencies; the patched build goes to its own directory.
mkdir -p "$root/target/no-audit"
ln -s "$root/target/no-audit" "$scratch/tree/target"
echo "== without auditing (bench/no-audit.patch)"
"$scratch/tree/bench/token.sh" "$duration"
echo "== audited"
"$root/bench/token.sh" "$duration"
