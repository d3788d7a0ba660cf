#!/usr/bin/env bash
# install-deps.sh: makes sure this Debian/Ubuntu machine has what agentserver
# and its tests need:
#   - PostgreSQL server binaries (initdb, postgres): `agentserver dev` without
#     DATABASE_URL and every test package that needs a database start a private
#     server from them (pkg/pgserver);
#   - python3: the example executors;
#   - PgBouncer (wanted, not required): the store's test through a real
#     transaction-mode pool (pkg/pgtest.PgBouncer; Debian installs it in
#     /usr/sbin), skipped where it cannot be installed.
# The server binaries are found as pkg/pgserver finds them: $PG_BINDIR, then
# `pg_config --bindir`, then /usr/lib/postgresql/*/bin, then initdb on $PATH.
#
# As root it installs what is missing with apt-get; otherwise it prints the
# command to run and exits 1. When everything is there it changes nothing and
# prints one line. The postgresql package also sets up a system cluster of its
# own (port 5432); agentserver does not use it.
set -euo pipefail

# pg_bindir prints the directory of the server binaries, or fails.
pg_bindir() {
	local dir
	if [[ -n "${PG_BINDIR:-}" ]]; then
		[[ -x "$PG_BINDIR/initdb" && -x "$PG_BINDIR/postgres" ]] && { echo "$PG_BINDIR"; return 0; }
		return 1 # pgserver would refuse a PG_BINDIR without them
	fi
	if command -v pg_config >/dev/null 2>&1; then
		dir="$(pg_config --bindir 2>/dev/null || true)"
		[[ -n "$dir" && -x "$dir/initdb" && -x "$dir/postgres" ]] && { echo "$dir"; return 0; }
	fi
	dir="$(find /usr/lib/postgresql -mindepth 2 -maxdepth 2 -name bin 2>/dev/null | sort -V | while read -r d; do
		[[ -x "$d/initdb" && -x "$d/postgres" ]] && echo "$d"
	done | tail -n 1)"
	[[ -n "$dir" ]] && { echo "$dir"; return 0; }
	if command -v initdb >/dev/null 2>&1; then
		dir="$(dirname "$(readlink -f "$(command -v initdb)")")"
		[[ -x "$dir/postgres" ]] && { echo "$dir"; return 0; }
	fi
	return 1
}

missing=()
packages=()
if ! pg_bindir >/dev/null; then
	if [[ -n "${PG_BINDIR:-}" ]]; then
		echo "install-deps: PG_BINDIR=$PG_BINDIR holds no initdb and postgres; unset it or point it at a PostgreSQL server installation" >&2
		exit 1
	fi
	missing+=("PostgreSQL server (initdb)")
	packages+=(postgresql)
fi
if ! command -v python3 >/dev/null 2>&1; then
	missing+=(python3)
	packages+=(python3)
fi
# PgBouncer serves one test (pkg/pgtest.PgBouncer): wanted, not required. As root it is
# installed with the rest; where it cannot be, its test is skipped and this says so.
# has_pgbouncer: on PATH, or where Debian's package puts it (/usr/sbin is not on every PATH).
has_pgbouncer() { command -v pgbouncer >/dev/null 2>&1 || [[ -x /usr/sbin/pgbouncer ]]; }
optional=()
if ! has_pgbouncer; then
	optional+=(pgbouncer)
fi

if ((${#packages[@]} + ${#optional[@]} == 0)); then
	echo "install-deps: all present (PostgreSQL server in $(pg_bindir), $(python3 --version 2>&1), PgBouncer)"
	exit 0
fi

# without_pgbouncer ends the script when only PgBouncer is missing and cannot be installed.
without_pgbouncer() {
	echo "install-deps: PgBouncer is missing ($1): its test (pkg/store TestStoreThroughPgBouncerInTransactionMode) will be skipped; install it with: sudo apt-get install pgbouncer" >&2
	exit 0
}

all=("${packages[@]}" "${optional[@]}")
command="apt-get update && apt-get install -y --no-install-recommends ${all[*]}"
if [[ "$(id -u)" -ne 0 ]]; then
	((${#packages[@]} == 0)) && without_pgbouncer "not root"
	echo "install-deps: missing ${missing[*]}; install with:" >&2
	echo "  sudo sh -c '$command'" >&2
	exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
	((${#packages[@]} == 0)) && without_pgbouncer "no apt-get"
	echo "install-deps: missing ${missing[*]} and there is no apt-get: install the packages ${packages[*]} with this system's package manager" >&2
	exit 1
fi

echo "install-deps: installing ${all[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
if ! { apt-get update && apt-get install -y --no-install-recommends "${all[@]}"; }; then
	((${#packages[@]} == 0)) && without_pgbouncer "apt-get failed"
	echo "install-deps: apt-get failed to install ${all[*]}" >&2
	exit 1
fi

if ! dir="$(pg_bindir)" || ! command -v python3 >/dev/null 2>&1; then
	echo "install-deps: still missing something after installing ${packages[*]}" >&2
	exit 1
fi
has_pgbouncer || without_pgbouncer "not found after installing it"
echo "install-deps: installed ${all[*]} (PostgreSQL server in $dir, $(python3 --version 2>&1))"
