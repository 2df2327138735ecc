#!/bin/sh
# Fails when docs/configuration.md misses a flag, environment variable or
# TOML key that the gateway's option table defines.
#
# usage: scripts/check_config_docs.sh path/to/openshell-gateway [docs.md]
#
# The list comes from `openshell-gateway --list-options`, one option a line:
# flag[,alias]<TAB>env<TAB>toml-key<TAB>default, with "-" for "none".
set -eu

if [ $# -lt 1 ] || [ $# -gt 2 ]; then
    echo "usage: $0 path/to/openshell-gateway [docs/configuration.md]" >&2
    exit 2
fi
bin=$1
docs=${2:-$(dirname "$0")/../docs/configuration.md}

if [ ! -r "$docs" ]; then
    echo "$0: cannot read $docs" >&2
    exit 2
fi
# Capture first: a pipeline would hide the binary's own failure.
if ! list=$("$bin" --list-options); then
    echo "$0: '$bin --list-options' failed" >&2
    exit 2
fi
if [ -z "$list" ]; then
    echo "$0: '$bin --list-options' printed nothing" >&2
    exit 2
fi

missing=0
tab=$(printf '\t')
while IFS=$tab read -r flags env key _default; do
    # The flag column may hold aliases: "--drivers,--driver". Whole-word
    # matches, so "--driver" is not found inside "--drivers".
    for name in $(printf '%s' "$flags" | tr ',' ' ') "$env" "$key"; do
        [ "$name" = "-" ] && continue
        if ! grep -qwF -- "$name" "$docs"; then
            echo "$docs: missing '$name'" >&2
            missing=$((missing + 1))
        fi
    done
done <<LIST
$list
LIST

if [ "$missing" -ne 0 ]; then
    echo "$0: $missing name(s) missing from $docs" >&2
    exit 1
fi
echo "$0: every option is documented in $docs"
