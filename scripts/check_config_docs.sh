#!/bin/sh
# Fails when docs/configuration.md misses or misstates a flag, environment
# variable or TOML key of the gateway.
#
# usage: scripts/check_config_docs.sh path/to/openshell-gateway [docs.md]
#
# The option list comes from `openshell-gateway --list-options`, one option
# a line: flag[,alias]<TAB>env<TAB>toml-key<TAB>default, with "-" for
# "none". Three checks:
#
#  1. names: every flag (and alias), environment variable and TOML key of
#     the list occurs in the page as a whole word;
#  2. rows: every option has a table row (a line starting with "|") that
#     names it (its first flag, else its TOML key) and also names its other
#     flags, its variable and its key, and shows its default: when the
#     table has a "Default" column, that cell starts with the default
#     (backticks ignored, so `0` (off) shows "0"); otherwise the default
#     occurs somewhere in the row. Rows are where a reader looks a setting
#     up, so a row that pairs a flag with the wrong variable, or a stale
#     default, fails here;
#  3. environment read outside the option table: every variable that the
#     gateway's own sources read with getenv("NAME") (or xdg_path("NAME",
#     ...)) occurs in the page. Sources are the C files under src/ next to
#     this script (CHECK_SRC_DIR overrides), minus the other programs'
#     folders (src/cli, src/supervisor, src/drivers/process).
set -eu

if [ $# -lt 1 ] || [ $# -gt 2 ]; then
    echo "usage: $0 path/to/openshell-gateway [docs/configuration.md]" >&2
    exit 2
fi
bin=$1
here=$(dirname "$0")
docs=${2:-$here/../docs/configuration.md}
srcdir=${CHECK_SRC_DIR:-$here/../src}

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

# ---- 1. names -------------------------------------------------------------
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

# ---- 2. rows and defaults -------------------------------------------------
# awk reads the list (stdin, first) and then the page. A token matches when
# the characters around it cannot continue a flag, variable, key or path.
rows=$(printf '%s\n' "$list" | awk -F "$tab" -v docs="$docs" '
function bound(c) { return c == "" || c !~ /[A-Za-z0-9_.\/<>$-]/ }
function has_tok(line, tok,    rest, off, i, pos) {
    rest = line; off = 0
    while ((i = index(rest, tok)) > 0) {
        pos = off + i
        if (bound(pos > 1 ? substr(line, pos - 1, 1) : "") &&
            bound(substr(line, pos + length(tok), 1)))
            return 1
        off = pos; rest = substr(line, off + 1)
    }
    return 0
}
function trim(s) { sub(/^[ \t]+/, "", s); sub(/[ \t]+$/, "", s); return s }
function starts_tok(cell, tok) {
    return substr(cell, 1, length(tok)) == tok && bound(substr(cell, length(tok) + 1, 1))
}
# The list: one option per line.
FNR == NR {
    n++
    flags[n] = $1; env[n] = $2; key[n] = $3; def[n] = $4
    next
}
# The page: table rows with their table'"'"'s Default column (0: none).
/^\|/ {
    line = $0; gsub(/`/, "", line)
    if (line ~ /^\|[ :|-]+$/)
        next                                  # the separator line
    ncell = split(line, cells, "|")
    if (!in_table) {                          # the header row
        in_table = 1; defcol = 0; hdr_cells = ncell
        for (c = 1; c <= ncell; c++)
            if (trim(cells[c]) == "Default")
                defcol = c
        next
    }
    nrow++
    row[nrow] = line
    rowdef[nrow] = (defcol > 0 && ncell == hdr_cells) ? trim(cells[defcol]) : ""
    rowhasdef[nrow] = (defcol > 0 && ncell == hdr_cells)
    next
}
{ in_table = 0 }
END {
    for (i = 1; i <= n; i++) {
        nf = split(flags[i] == "-" ? "" : flags[i], fl, ",")
        primary = nf > 0 ? fl[1] : key[i]
        if (primary == "-" || primary == "")
            continue
        found = 0; ok = 0; why = ""
        for (r = 1; r <= nrow && !ok; r++) {
            if (!has_tok(row[r], primary))
                continue
            found = 1; bad = ""
            for (f = 2; f <= nf; f++)
                if (!has_tok(row[r], fl[f])) bad = bad " flag " fl[f]
            if (env[i] != "-" && !has_tok(row[r], env[i])) bad = bad " variable " env[i]
            if (key[i] != "-" && !has_tok(row[r], key[i])) bad = bad " key " key[i]
            if (def[i] != "-") {
                if (rowhasdef[r] ? !starts_tok(rowdef[r], def[i]) : !has_tok(row[r], def[i]))
                    bad = bad " default \"" def[i] "\""
            }
            if (bad == "") ok = 1
            else if (why == "") why = bad
        }
        if (!found)
            printf "%s: no table row names %s\n", docs, primary
        else if (!ok)
            printf "%s: the row of %s lacks%s\n", docs, primary, why
    }
}' - "$docs")
if [ -n "$rows" ]; then
    printf '%s\n' "$rows" >&2
    missing=$((missing + $(printf '%s\n' "$rows" | wc -l)))
fi

# ---- 3. environment read outside the option table ---------------------------
if [ -d "$srcdir" ]; then
    vars=$(find "$srcdir" -name '*.c' ! -path '*/cli/*' ! -path '*/supervisor/*' \
        ! -path '*/drivers/process/*' -exec grep -hoE \
        '(getenv|xdg_path)\("[A-Za-z_][A-Za-z0-9_]*"' {} + |
        sed 's/.*("\([^"]*\)"/\1/' | sort -u)
    for name in $vars; do
        if ! grep -qwF -- "$name" "$docs"; then
            echo "$docs: missing '$name' (read by the gateway from the environment)" >&2
            missing=$((missing + 1))
        fi
    done
else
    echo "$0: note: no sources at $srcdir; environment reads not checked" >&2
fi

if [ "$missing" -ne 0 ]; then
    echo "$0: $missing problem(s) in $docs" >&2
    exit 1
fi
echo "$0: every option is documented in $docs"
