#!/usr/bin/env bash
# Checks Grafana dashboard JSON against Grafana's published schema: each file becomes a TypeScript constant typed
# as the `Dashboard` of @grafana/schema, and `tsc --strict` must accept it (wrong types, missing required fields,
# unknown keys and bad enum values fail). Versions are pinned in package.json and package-lock.json.
# Usage: dashboards/check/check.sh FILE.json...   Exit 0: all valid; 1: some invalid; 2: could not check.
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
[ $# -gt 0 ] || { echo "usage: $0 DASHBOARD.json..." >&2; exit 2; }
command -v npm >/dev/null || { echo "npm is needed (Debian: apt-get install -y npm)" >&2; exit 2; }
if [ ! -x "$here/node_modules/.bin/tsc" ]; then
    (cd "$here" && npm ci --silent --no-audit --no-fund >&2) || { echo "npm ci failed" >&2; exit 2; }
fi
status=0
for file in "$@"; do
    if ! python3 -c 'import json, sys; json.load(open(sys.argv[1]))' "$file" 2>/dev/null; then
        echo "INVALID: $file is not JSON"
        status=1
        continue
    fi
    work=$(mktemp -d "$here/.work.XXXXXX")
    {
        echo "import type { Dashboard } from '@grafana/schema';"
        printf 'export const dashboard: Dashboard = '
        cat "$file"
        echo ';'
    } > "$work/dashboard.ts"
    if (cd "$here" && ./node_modules/.bin/tsc --noEmit --strict --skipLibCheck --target es2022 \
            --module esnext --moduleResolution bundler "$work/dashboard.ts"); then
        echo "OK: $file matches the Dashboard type of @grafana/schema"
    else
        echo "INVALID: $file"
        status=1
    fi
    rm -rf "$work"
done
exit $status
