#!/usr/bin/env bash
# Tessera's own JOSE against jsonwebtoken 9 (its last major version on ring): ES256
# access-token signing and verification on one core, the same key and claims (README:
# Security decisions). Its own workspace, so the product never builds jsonwebtoken.
# Usage: bench/jose-compare/run.sh [tokens per round, default 20000]
set -euo pipefail
cd "$(dirname "$0")"
cargo build --release --quiet
taskset -c 0 target/release/jose-compare "${1:-20000}"
