#!/usr/bin/env bash
# Add Debian's <codename>-backports suite, derived from the APT sources this machine already
# uses (same mirror, same signing key), so no mirror name is written here. Prints the suite.
set -euo pipefail

. /etc/os-release
codename=${VERSION_CODENAME:-}
[ -n "$codename" ] || { echo "no VERSION_CODENAME in /etc/os-release" >&2; exit 1; }
suite="$codename-backports"
target=/etc/apt/sources.list.d/qproxy-backports.sources

if grep -rqsE "(^|[[:space:]])$suite([[:space:]]|$)" /etc/apt/sources.list /etc/apt/sources.list.d/; then
  echo "$suite"; exit 0
fi

uri="" signed=""
# deb822 files: the stanza whose Suites list the release itself.
for file in /etc/apt/sources.list.d/*.sources; do
  [ -e "$file" ] || continue
  found=$(awk -v codename="$codename" '
    BEGIN { RS=""; FS="\n" }
    {
      uris=""; suites=""; key=""
      for (i = 1; i <= NF; i++) {
        if ($i ~ /^URIs:/) { uris=$i; sub(/^URIs:[ \t]*/, "", uris) }
        if ($i ~ /^Suites:/) { suites=" " $i " "; sub(/^ Suites:/, " ", suites) }
        if ($i ~ /^Signed-By:/) { key=$i; sub(/^Signed-By:[ \t]*/, "", key) }
      }
      if (suites ~ (" " codename " ")) { split(uris, u, " "); print u[1] "|" key; exit }
    }' "$file")
  if [ -n "$found" ]; then uri=${found%%|*}; signed=${found#*|}; break; fi
done
# One-line format: "deb [options] URI codename components".
if [ -z "$uri" ] && [ -f /etc/apt/sources.list ]; then
  uri=$(awk -v codename="$codename" '$1 == "deb" {
      for (i = 2; i <= NF; i++) if ($i !~ /^\[/ && $i !~ /\]$/ && $i !~ /=/) { if ($(i+1) == codename) print $i; break }
    }' /etc/apt/sources.list | head -n 1)
fi
[ -n "$uri" ] || { echo "cannot find the APT source for $codename to derive $suite from" >&2; exit 1; }

{
  echo "Types: deb"
  echo "URIs: $uri"
  echo "Suites: $suite"
  echo "Components: main"
  [ -n "$signed" ] && echo "Signed-By: $signed"
} > "$target"
echo "$suite"
