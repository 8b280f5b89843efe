#!/bin/sh
# web-ui's figures, on loopback, against the release binary:
#   TLS handshakes per second (TLS 1.3 and 1.2, new session each time), with `openssl
#   s_server` on the same kind of key (ECDSA P-256) as the anchor;
#   requests per second for a static asset with wrk, against /healthz (the cheapest route);
#   memory (VmRSS) at idle after start, and again idle after the load.
# Usage: web-ui/scripts/bench.sh [path/to/web-ui]   (default: the release build in
# $CARGO_TARGET_DIR or target/). Needs openssl and wrk. Prints a Markdown table.
set -eu
binary=${1:-${CARGO_TARGET_DIR:-target}/release/web-ui}
seconds=${BENCH_SECONDS:-10}
port=${BENCH_PORT:-28443}
anchor_port=$((port + 1))
work=$(mktemp -d)
cleanup() {
    [ -n "${server_pid:-}" ] && kill "$server_pid" 2>/dev/null || true
    [ -n "${anchor_pid:-}" ] && kill "$anchor_pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

"$binary" --state-dir "$work/state" --listen 127.0.0.1 --https-port "$port" --no-http \
    --supervisor-socket "$work/none.sock" >"$work/web-ui.out" 2>"$work/web-ui.err" &
server_pid=$!
i=0
until wrk -t1 -c1 -d1s "https://127.0.0.1:$port/healthz" >/dev/null 2>&1; do
    i=$((i + 1)); [ $i -lt 50 ] || { cat "$work/web-ui.err"; exit 1; }; sleep 0.2
done
sleep 2
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
idle_start=$(rss_kib "$server_pid")

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=localhost \
    -keyout "$work/anchor.key" -out "$work/anchor.pem" -days 1 2>/dev/null
openssl s_server -accept "$anchor_port" -cert "$work/anchor.pem" -key "$work/anchor.key" \
    -www -quiet >/dev/null 2>&1 &
anchor_pid=$!
sleep 1

handshakes() { # port, protocol flag -> connections per second (wall clock)
    openssl s_time -connect "127.0.0.1:$1" -new -time "$seconds" "$2" 2>/dev/null |
        awk '/connections in [0-9.]+ real seconds/ {for (i = 1; i <= NF; i++) if ($i == "connections") n = $(i - 1); for (i = 1; i <= NF; i++) if ($i == "real") s = $(i - 1); printf "%.0f", n / s; exit}'
}
requests() { # url -> requests per second
    wrk -t2 -c32 -d"${seconds}s" "$1" 2>/dev/null | awk '/Requests\/sec/ {printf "%.0f", $2}'
}
h13=$(handshakes "$port" -tls1_3); a13=$(handshakes "$anchor_port" -tls1_3)
h12=$(handshakes "$port" -tls1_2); a12=$(handshakes "$anchor_port" -tls1_2)
asset=$(requests "https://127.0.0.1:$port/assets/app.js")
health=$(requests "https://127.0.0.1:$port/healthz")
sleep 2
idle_after=$(rss_kib "$server_pid")
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }

echo "| Figure | web-ui | anchor | ratio |"
echo "|---|---|---|---|"
echo "| TLS 1.3 handshakes/s (new sessions, openssl s_time) | $h13 | $a13 (openssl s_server) | $(ratio "$h13" "$a13") |"
echo "| TLS 1.2 handshakes/s (new sessions, openssl s_time) | $h12 | $a12 (openssl s_server) | $(ratio "$h12" "$a12") |"
echo "| /assets/app.js requests/s (wrk -t2 -c32, keep-alive) | $asset | $health (/healthz) | $(ratio "$asset" "$health") |"
echo "| VmRSS idle after start (KiB) | $idle_start | | |"
echo "| VmRSS idle after the load (KiB) | $idle_after | | |"
