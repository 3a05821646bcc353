# Sourced by the bench scripts: a median, and the demo model served on a free loopback port.

# es_median V...: the median of the numbers given.
es_median() {
  printf '%s\n' "$@" | sort -g | awk '{v[NR] = $1} END {print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'
}

# es_workdir: a fresh temporary directory in $work, removed at exit after the server the script started
# ($server_pid, when set) has stopped.
es_workdir() {
  work=$(mktemp -d)
  server_pid=""
  trap es_stop_and_clean EXIT
}
es_stop_and_clean() {
  if [ -n "$server_pid" ]; then kill -TERM "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}

# es_serve_demo CLI FIXTURE WORKDIR [serve flags...]: ingests models/tiny-qwen3-moe as `tiny` into WORKDIR/store,
# adds the synthetic trust and profile records (FIXTURE, bench/http_bench_fixture), starts `serve` on it without a
# per-connection rate limit, and sets server_pid and base (http://127.0.0.1:PORT). The caller stops the server.
es_serve_demo() {
  local cli=$1 fixture=$2 dir=$3 root
  shift 3
  root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  "$cli" ingest "$root/models/tiny-qwen3-moe" --name tiny --store "$dir/store" --quiet >/dev/null
  "$fixture" "$dir/store" tiny
  "$cli" serve --store "$dir/store" --port 0 --json --quiet --rate 0 "$@" >"$dir/serve.json" &
  server_pid=$!
  for _ in $(seq 100); do [ -s "$dir/serve.json" ] && break; sleep 0.1; done
  local port
  port=$(sed -n 's/.*"port":\([0-9]*\).*/\1/p' "$dir/serve.json")
  [ -n "$port" ] || { echo "the server did not start" >&2; return 1; }
  base=http://127.0.0.1:$port
}
