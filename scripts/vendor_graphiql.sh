#!/usr/bin/env bash
# Vendor GraphiQL's browser assets into the Python package (no CDN at run time).
#
# GraphiQL 4.1.2 is the last release with a UMD bundle (graphiql.min.js, global
# `GraphiQL`, needs the React/ReactDOM UMD globals); 5.x ships ES modules only
# (bare imports of react, monaco-editor and its web workers), which a browser
# cannot load without a bundler or an import map onto a CDN. React 19 dropped
# its UMD builds, so React and ReactDOM are pinned to 18.3.1.
#
#   bash scripts/vendor_graphiql.sh          fetch with `npm pack`, copy, write SHA256SUMS
#   bash scripts/vendor_graphiql.sh --check  fetch again and compare with the committed SHA256SUMS
set -euo pipefail

GRAPHIQL=4.1.2
REACT=18.3.1
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DEST="$ROOT/fraiseshm/http/static/graphiql"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

command -v npm >/dev/null || { echo "vendor_graphiql: npm is missing (apt-get install npm)" >&2; exit 1; }
(cd "$WORK" && npm pack --silent "graphiql@$GRAPHIQL" "react@$REACT" "react-dom@$REACT" >/dev/null)
for spec in "graphiql-$GRAPHIQL" "react-$REACT" "react-dom-$REACT"; do
    pkg=${spec%-*}
    mkdir -p "$WORK/$pkg"
    tar xzf "$WORK/$spec.tgz" -C "$WORK/$pkg"
done

OUT="$WORK/out"
mkdir -p "$OUT"
cp "$WORK/graphiql/package/graphiql.min.js" "$WORK/graphiql/package/graphiql.min.css" "$OUT/"
cp "$WORK/graphiql/package/LICENSE" "$OUT/graphiql.LICENSE"
cp "$WORK/react/package/umd/react.production.min.js" "$OUT/"
cp "$WORK/react/package/LICENSE" "$OUT/react.LICENSE"
cp "$WORK/react-dom/package/umd/react-dom.production.min.js" "$OUT/"
cp "$WORK/react-dom/package/LICENSE" "$OUT/react-dom.LICENSE"
printf 'graphiql %s\nreact %s\nreact-dom %s\n' "$GRAPHIQL" "$REACT" "$REACT" > "$OUT/VERSIONS"
(cd "$OUT" && sha256sum -- *.js *.css *.LICENSE VERSIONS > SHA256SUMS)

if [[ "${1:-}" == "--check" ]]; then
    diff -u "$DEST/SHA256SUMS" "$OUT/SHA256SUMS" && (cd "$DEST" && sha256sum --quiet -c SHA256SUMS) \
        && echo "vendor_graphiql: the committed assets match npm's graphiql@$GRAPHIQL, react@$REACT, react-dom@$REACT"
    exit
fi
rm -f "$DEST"/*
cp "$OUT"/* "$DEST/"
echo "vendor_graphiql: graphiql@$GRAPHIQL, react@$REACT, react-dom@$REACT -> $DEST"
cat "$DEST/SHA256SUMS"
