#!/usr/bin/env bash
# The whole test suite: unit, integration and end-to-end tests against the real PostgreSQL
# and RabbitMQ on 127.0.0.1. Binaries are built first because the end-to-end tests run the
# real warren-worker and warren processes.
set -euo pipefail
cd "$(dirname "$0")/.."
source deploy/services.sh
ensure_rust
ensure_nextest
ensure_services
cargo build --workspace --bins
cargo nextest run --workspace --no-fail-fast "$@"
