#!/usr/bin/env bash
# Regenerates BENCHMARKS.md: runs every SPEC §10 row against chatd and its baselines on this machine, then
# writes the tables and charts from the results.
#
#   benches/run.sh                # every row (about 40 minutes)
#   benches/run.sh fanout rooms   # some rows; the report is rebuilt from every result present
#   QUICK=1 benches/run.sh        # small sizes and short phases, to try the script (figures are not comparable)
#   benches/run.sh pg-durable cluster-fanout cluster-rooms cluster-failover   # PostgreSQL and cluster (§12)
#   benches/run.sh federation     # two linked servers (§13): relay throughput, added latency, catch-up
#   benches/run.sh irc-idle irc-fanout  # the IRC door (§14): 19,000 idle connections; fan-out beside bare-irc
#
# Rows: idle fanout rooms longpoll durable search restart, and (not in the default set, they need PostgreSQL
# 15 at /usr/lib/postgresql/15/bin) pg-durable cluster-fanout cluster-rooms cluster-failover, which start a
# PostgreSQL server of their own in the work dir (benches/pg.py). Results go to benches/results/*.json, the report to
# BENCHMARKS.md and docs/bench/*.svg (benches/report.py). Everything runs on 127.0.0.0/8, every run is bounded
# in connections and time, and every server this script starts is stopped when it ends. Run it on a quiet
# machine: no build or other load beside it.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
OUT=benches/results
WORK=$(mktemp -d /tmp/chatd-bench.XXXXXX)
mkdir -p "$OUT"
BIN=${CARGO_TARGET_DIR:-target}/release
LOADGEN=$BIN/chat-loadgen
QUICK=${QUICK:-0}

CHATD_ADDR=127.0.0.1:18080
BARE_WS_ADDR=127.0.0.1:18081
NATS_WS_ADDR=127.0.0.1:18082
BARE_LP_ADDR=127.0.0.1:18083
RESTART_ADDR=127.0.0.1:18084
CHATD_IRC_ADDR=127.0.0.1:18085
BARE_IRC_ADDR=127.0.0.1:18086
# The cluster's nodes listen on 18091, 18092, ...
CLUSTER_PORT_BASE=18090

if [ "$QUICK" = 1 ]; then
  IDLE_CONNS=${IDLE_CONNS:-2000}; IDLE_SECONDS=${IDLE_SECONDS:-10}
  IRC_IDLE_CONNS=${IRC_IDLE_CONNS:-2000}; IRC_FANOUT_CONNS=${IRC_FANOUT_CONNS:-1000}
  FANOUT_SIZES=${FANOUT_SIZES:-"100 1000"}; FANOUT_DELIVERIES=${FANOUT_DELIVERIES:-200000}
  ROOMS_CONNS=${ROOMS_CONNS:-1000}; ROOMS_LOADS=${ROOMS_LOADS:-"20 60"}; LONGPOLL_SIZES=${LONGPOLL_SIZES:-"1000"}; PHASE=${PHASE:-5}
  CLUSTER_FANOUT_CONNS=${CLUSTER_FANOUT_CONNS:-3000}; CLUSTER_FANOUT_MESSAGES=${CLUSTER_FANOUT_MESSAGES:-10}
  FAILOVER_KILLS=${FAILOVER_KILLS:-3}; PG_COMMIT_SECONDS=${PG_COMMIT_SECONDS:-5}; ROOMS_REPEAT=${ROOMS_REPEAT:-1}
else
  IDLE_CONNS=${IDLE_CONNS:-19500}; IDLE_SECONDS=${IDLE_SECONDS:-300}
  IRC_IDLE_CONNS=${IRC_IDLE_CONNS:-19000}; IRC_FANOUT_CONNS=${IRC_FANOUT_CONNS:-10000}
  FANOUT_SIZES=${FANOUT_SIZES:-"100 1000 5000 10000"}; FANOUT_DELIVERIES=${FANOUT_DELIVERIES:-3000000}
  ROOMS_CONNS=${ROOMS_CONNS:-10000}; ROOMS_LOADS=${ROOMS_LOADS:-"10 20 40 60 80"}; LONGPOLL_SIZES=${LONGPOLL_SIZES:-"1000 15000"}; PHASE=${PHASE:-20}
  CLUSTER_FANOUT_CONNS=${CLUSTER_FANOUT_CONNS:-57000}; CLUSTER_FANOUT_MESSAGES=${CLUSTER_FANOUT_MESSAGES:-50}
  FAILOVER_KILLS=${FAILOVER_KILLS:-10}; PG_COMMIT_SECONDS=${PG_COMMIT_SECONDS:-20}; ROOMS_REPEAT=${ROOMS_REPEAT:-5}
fi
CLUSTER_NODES=${CLUSTER_NODES:-3}

SERVER_PID=
CLUSTER_PIDS=()
PG_DIR=
cleanup() {
  stop_server
  stop_cluster
  pg_down
  rm -rf "$WORK"
}
trap cleanup EXIT

log() { printf '\n== %s %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

# Waits until a TCP port accepts connections (at most 60 s).
wait_port() {
  local addr=$1 host port
  host=${addr%:*}; port=${addr#*:}
  for _ in $(seq 1 1200); do
    if (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null; then return 0; fi
    sleep 0.05
  done
  echo "nothing listens on $addr" >&2
  return 1
}

# Starts one server (chatd, bare-ws, bare-longpoll or nats) in the background; sets SERVER_PID.
start_server() {
  local kind=$1 dir
  stop_server
  case $kind in
    chatd)
      dir=$(mktemp -d "$WORK/chatd.XXXX")
      MAX_CONNECTIONS_PER_IP=1000000 RATE_LIMIT=off LISTEN=$CHATD_ADDR \
        DBURL="sqlite://$dir/chat.db" DATA_DIR="$dir/data" RUST_LOG=warn \
        $BIN/chatd serve >"$dir/log" 2>&1 &
      SERVER_PID=$!; wait_port $CHATD_ADDR ;;
    chatd-pg)
      # One node on PostgreSQL (a fresh database per run), otherwise as chatd above.
      local dburl
      dir=$(mktemp -d "$WORK/chatd-pg.XXXX")
      pg_up; dburl=$(python3 benches/pg.py fresh "$PG_DIR" chatd)
      MAX_CONNECTIONS_PER_IP=1000000 RATE_LIMIT=off LISTEN=$CHATD_ADDR NODE_ID=1 \
        DBURL="$dburl" DATA_DIR="$dir/data" RUST_LOG=warn \
        $BIN/chatd serve >"$dir/log" 2>&1 &
      SERVER_PID=$!; wait_port $CHATD_ADDR ;;
    chatd-irc)
      # chatd with its IRC door; flood control off, as for the HTTP senders (RATE_LIMIT=off).
      dir=$(mktemp -d "$WORK/chatd.XXXX")
      MAX_CONNECTIONS_PER_IP=1000000 RATE_LIMIT=off LISTEN=$CHATD_ADDR IRC_LISTEN=$CHATD_IRC_ADDR \
        IRC_FLOOD=1000000/1000000 DBURL="sqlite://$dir/chat.db" DATA_DIR="$dir/data" RUST_LOG=warn \
        $BIN/chatd serve >"$dir/log" 2>&1 &
      SERVER_PID=$!; wait_port $CHATD_ADDR; wait_port $CHATD_IRC_ADDR ;;
    bare-irc)
      $BIN/bare-irc --listen $BARE_IRC_ADDR >"$WORK/bare-irc.log" 2>&1 &
      SERVER_PID=$!; wait_port $BARE_IRC_ADDR ;;
    bare-ws)
      $BIN/bare-ws --listen $BARE_WS_ADDR >"$WORK/bare-ws.log" 2>&1 &
      SERVER_PID=$!; wait_port $BARE_WS_ADDR ;;
    bare-longpoll)
      $BIN/bare-longpoll $BARE_LP_ADDR >"$WORK/bare-longpoll.log" 2>&1 &
      SERVER_PID=$!; wait_port $BARE_LP_ADDR ;;
    nats)
      nats-server -c benches/nats-ws.conf >"$WORK/nats.log" 2>&1 &
      SERVER_PID=$!; wait_port $NATS_WS_ADDR ;;
  esac
}

stop_server() {
  if [ -n "${SERVER_PID:-}" ]; then
    kill "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=
  fi
}

# PostgreSQL of this run's own (benches/pg.py), started once and stopped at the end.
pg_up() {
  [ -n "$PG_DIR" ] && return 0
  PG_DIR=$WORK/pg
  log "PostgreSQL: $(python3 benches/pg.py start "$PG_DIR" | sed 's/^/port /')"
}

pg_down() {
  if [ -n "${PG_DIR:-}" ]; then python3 benches/pg.py stop "$PG_DIR" || true; PG_DIR=; fi
}

# Starts CLUSTER_NODES chatd nodes on a fresh PostgreSQL database and one shared DATA_DIR, node 1 first so
# that it holds the writer's lease (setup and sends go through it); sets CLUSTER_PIDS and CLUSTER_URLS.
start_cluster() {
  local dir dburl i
  stop_server; stop_cluster; pg_up
  dir=$(mktemp -d "$WORK/cluster.XXXX")
  dburl=$(python3 benches/pg.py fresh "$PG_DIR" cluster)
  CLUSTER_URLS=
  for i in $(seq 1 "$CLUSTER_NODES"); do
    MAX_CONNECTIONS_PER_IP=1000000 RATE_LIMIT=off LISTEN=127.0.0.1:$((CLUSTER_PORT_BASE + i)) NODE_ID=$i \
      DBURL="$dburl" DATA_DIR="$dir/data" RUST_LOG=warn \
      $BIN/chatd serve >"$dir/log-$i" 2>&1 &
    CLUSTER_PIDS+=($!)
    wait_port 127.0.0.1:$((CLUSTER_PORT_BASE + i))
    CLUSTER_URLS+="${CLUSTER_URLS:+,}http://127.0.0.1:$((CLUSTER_PORT_BASE + i))"
    [ "$i" = 1 ] && wait_writer "http://127.0.0.1:$((CLUSTER_PORT_BASE + 1))"
  done
  # Every node linked and following before load starts.
  python3 - "$CLUSTER_URLS" "$CLUSTER_NODES" <<'PY'
import json, sys, time, urllib.request
urls, n = sys.argv[1].split(","), int(sys.argv[2])
deadline = time.time() + 60
while time.time() < deadline:
    try:
        views = [json.load(urllib.request.urlopen(u + "/api/v1/server", timeout=2))["nodes"] for u in urls]
        if all(len(v) == n and sum(x["role"] == "writer" for x in v) == 1 for v in views):
            sys.exit(0)
    except OSError:
        pass
    time.sleep(0.2)
sys.exit("the cluster's nodes did not all see one writer within 60 s")
PY
}

# Waits until the node at URL reports itself the writer (at most 60 s).
wait_writer() {
  python3 - "$1" <<'PY'
import json, sys, time, urllib.request
deadline = time.time() + 60
while time.time() < deadline:
    try:
        nodes = json.load(urllib.request.urlopen(sys.argv[1] + "/api/v1/server", timeout=2))["nodes"]
        if any(x["self"] and x["role"] == "writer" for x in nodes):
            sys.exit(0)
    except OSError:
        pass
    time.sleep(0.1)
sys.exit(sys.argv[1] + " did not become the writer within 60 s")
PY
}

stop_cluster() {
  local pid
  for pid in "${CLUSTER_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${CLUSTER_PIDS[@]}"; do
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  CLUSTER_PIDS=()
}

url_of() {
  case $1 in
    chatd|chatd-pg|chatd-irc) echo "http://$CHATD_ADDR" ;;
    bare-irc) echo "http://$BARE_IRC_ADDR" ;;
    bare-ws) echo "http://$BARE_WS_ADDR" ;;
    bare-longpoll) echo "http://$BARE_LP_ADDR" ;;
    nats) echo "http://$NATS_WS_ADDR" ;;
  esac
}

# Gateway-style processes: 2 above 9000 connections (the per-process open-file limit is 20,000).
procs_for() { if [ "$1" -gt 9000 ]; then echo 2; else echo 1; fi; }

# loadgen SERVER NAME ARGS...: one chat-loadgen run against a fresh SERVER, its report to $OUT/NAME.json.
loadgen() {
  local server=$1 name=$2; shift 2
  local extra=()
  [ "$server" = nats ] && extra=(--server-kind nats)
  [ "$server" = chatd-irc ] && extra=(--server-kind irc --irc "$CHATD_IRC_ADDR")
  [ "$server" = bare-irc ] && extra=(--server-kind bare-irc --irc "$BARE_IRC_ADDR")
  start_server "$server"
  log "$name: chat-loadgen $* ${extra[*]}"
  "$LOADGEN" "$@" "${extra[@]}" --url "$(url_of "$server")" --server-pid "$SERVER_PID" \
    --json "$OUT/$name.json" || echo "run $name failed" >&2
  stop_server
}

# loadgen_cluster NAME ARGS...: one chat-loadgen run against a fresh cluster, its gateway connections spread
# over the nodes; the sampled server is node 1 (the writer).
loadgen_cluster() {
  local name=$1; shift
  start_cluster
  # CLUSTER_LOAD_NODES=k puts the load on the first k nodes only (the others still follow the log).
  local urls
  urls=$(echo "$CLUSTER_URLS" | cut -d, -f"1-${CLUSTER_LOAD_NODES:-$CLUSTER_NODES}")
  log "$name: chat-loadgen $* --url $urls"
  "$LOADGEN" "$@" --url "$urls" --server-pid "${CLUSTER_PIDS[0]}" --json "$OUT/$name.json" \
    || echo "run $name failed" >&2
  stop_cluster
}

json_get() { python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(eval(sys.argv[2], {}, {'d': d}))" "$@"; }

row_idle() {
  local procs=2
  for s in chatd bare-ws; do
    loadgen "$s" "idle-$s" idle --conns "$IDLE_CONNS" --duration "$IDLE_SECONDS" --procs $procs
  done
}

# IRC (SPEC §14): idle registered connections held by chatd's IRC door (RSS per connection, none dropped),
# and fan-out to one channel of IRC connections beside the bare line-broadcast server (chat-bench's bare-irc).
row_irc-idle() {
  loadgen chatd-irc irc-idle-chatd idle --conns "$IRC_IDLE_CONNS" --duration "$IDLE_SECONDS" --procs 2
}

row_irc-fanout() {
  local n=$IRC_FANOUT_CONNS messages=$(( FANOUT_DELIVERIES / IRC_FANOUT_CONNS ))
  for s in chatd-irc bare-irc; do
    loadgen "$s" "irc-fanout-$n-$s" fanout --conns "$n" --messages "$messages" --rate 0 \
      --procs "$(procs_for "$n")"
  done
}

row_fanout() {
  for n in $FANOUT_SIZES; do
    local messages=$(( FANOUT_DELIVERIES / n ))
    for s in chatd bare-ws nats; do
      loadgen "$s" "fanout-$n-$s" fanout --conns "$n" --messages "$messages" --rate 0 \
        --procs "$(procs_for "$n")" --socket-buffer-kib 0
    done
  done
}

row_rooms() {
  local n=$ROOMS_CONNS procs max
  procs=$(procs_for "$n")
  # The most messages/s chatd delivers to rooms of 10; then latency at fractions of it (20% is the SPEC row),
  # for chatd and, at the same message rates, bare-ws.
  loadgen chatd rooms-max-chatd rooms --conns "$n" --rate 0 --messages $(( n * 5 )) --procs "$procs" \
    --socket-buffer-kib 0
  max=$(json_get "$OUT/rooms-max-chatd.json" "d['deliveries_per_s'] / d['parameters']['room_size']")
  for pct in $ROOMS_LOADS; do
    local rate
    rate=$(python3 -c "print(max(1, round($max * $pct / 100)))")
    for s in chatd bare-ws; do
      loadgen "$s" "rooms-$pct-$s" rooms --conns "$n" --rate "$rate" --duration "$PHASE" --procs "$procs" \
        --socket-buffer-kib 0
    done
  done
}

row_longpoll() {
  for n in $LONGPOLL_SIZES; do
    local procs rate
    procs=$(procs_for "$n")
    # Saturation: more wake-ups asked for than either server completes.
    rate=$(( 200000 / n ))
    for s in chatd bare-longpoll; do
      loadgen "$s" "longpoll-$n-$s" longpoll --conns "$n" --rate "$rate" --duration "$PHASE" --procs "$procs"
    done
  done
  # Wake-up latency: one message at a time to 1k parked polls, far below saturation.
  for s in chatd bare-longpoll; do
    loadgen "$s" "wake-1000-$s" longpoll --conns 1000 --rate 2 --duration "$PHASE"
  done
}

row_durable() {
  for senders in 64 512; do
    loadgen chatd "durable-$senders-chatd" durable-send --conns "$senders" --rate 0 --duration "$PHASE"
  done
  loadgen chatd durable-1-chatd durable-send --conns 1 --rate 0 --duration "$PHASE"
  log "durable baselines: fdatasync and SQLite WAL FULL commits"
  python3 benches/disk.py "$WORK" >"$OUT/disk.json"
}

row_search() {
  log "search and start-up at 1M messages: cargo bench -p chat-store --bench scale"
  BENCH_JSON="$ROOT/$OUT/scale.json" cargo bench -q -p chat-store --bench scale
}

row_restart() {
  # chatd restarted on the scale bench's 1M-message database; baseline: the same process start for
  # bare-longpoll (no data) and the store's I/O floor from the scale bench.
  local db
  db=$(ls -t target/bench-data/chat-store-scale-1000000-*.db 2>/dev/null | head -1)
  if [ -z "$db" ]; then row_search; db=$(ls -t target/bench-data/chat-store-scale-1000000-*.db | head -1); fi
  log "restart with 1M messages ($db)"
  python3 benches/restart.py --db "$db" --chatd $BIN/chatd --bare $BIN/bare-longpoll \
    --addr $RESTART_ADDR --work "$WORK" >"$OUT/restart.json"
}

# Durable sends through one node on PostgreSQL beside the same runs on SQLite, taken in turn so that both see
# the same machine; the floor is a bare single-row PostgreSQL commit (pgbench).
row_pg-durable() {
  for senders in 64 512 1; do
    loadgen chatd "pg-durable-$senders-sqlite" durable-send --conns "$senders" --rate 0 --duration "$PHASE"
    loadgen chatd-pg "pg-durable-$senders-pg" durable-send --conns "$senders" --rate 0 --duration "$PHASE"
  done
  log "durable baseline: single-row PostgreSQL commits (pgbench, ${PG_COMMIT_SECONDS} s)"
  pg_up
  python3 benches/pg.py commit "$PG_DIR" "$PG_COMMIT_SECONDS" >"$OUT/pg-commit.json"
}

# One channel of CLUSTER_FANOUT_CONNS members spread over the nodes (19k a node at full size), one sender.
row_cluster-fanout() {
  local n=$CLUSTER_FANOUT_CONNS procs
  procs=${CLUSTER_FANOUT_PROCS:-$(( (n + 18999) / 19000 ))}
  loadgen_cluster "cluster-fanout-$n" fanout --conns "$n" --messages "$CLUSTER_FANOUT_MESSAGES" --rate 0 \
    --procs "$procs" --socket-buffer-kib 0
}

# Rooms of 10, each room's members spread over the nodes, at 20% of the most one node on PostgreSQL delivers;
# the same rate on that one node is the baseline (and row_rooms' SQLite node, if present, a second one).
row_cluster-rooms() {
  local n=$ROOMS_CONNS procs max rate
  procs=$(procs_for "$n")
  loadgen chatd-pg cluster-rooms-max-pg rooms --conns "$n" --rate 0 --messages $(( n * 5 )) --procs "$procs" \
    --socket-buffer-kib 0
  max=$(json_get "$OUT/cluster-rooms-max-pg.json" "d['deliveries_per_s'] / d['parameters']['room_size']")
  rate=$(python3 -c "print(max(1, round($max * 20 / 100)))")
  # A p99 of one 20 s phase on PostgreSQL swings by 2-4x from run to run (fsync stalls): the two sides take
  # turns ROOMS_REPEAT times and the report compares their medians.
  rm -f "$OUT"/cluster-rooms-20-pg*.json "$OUT"/cluster-rooms-20-cluster*.json
  for k in $(seq 1 "$ROOMS_REPEAT"); do
    loadgen chatd-pg "cluster-rooms-20-pg-$k" rooms --conns "$n" --rate "$rate" --duration "$PHASE" \
      --procs "$procs" --socket-buffer-kib 0
    loadgen_cluster "cluster-rooms-20-cluster-$k" rooms --conns "$n" --rate "$rate" --duration "$PHASE" \
      --procs "$procs" --socket-buffer-kib 0
  done
}

# The writer killed (SIGKILL) under load FAILOVER_KILLS times: the time until writes are acknowledged again.
row_cluster-failover() {
  pg_up
  log "failover: $FAILOVER_KILLS kills of the writer (benches/failover.py)"
  python3 benches/failover.py --chatd $BIN/chatd --pg-dir "$PG_DIR" --work "$WORK" --kills "$FAILOVER_KILLS" \
    --port-base $((CLUSTER_PORT_BASE + 10)) --json "$OUT/cluster-failover.json" || echo "run failover failed" >&2
}

# Two servers linked by federation, on ports 18111 and 18112 (benches/federation.py): relay throughput with
# delivery on the far side, the latency the link adds at 20% of it, and the catch-up after 60 s down.
row_federation() {
  log "federation: two linked servers (benches/federation.py)"
  local quick=()
  [ "$QUICK" = 1 ] && quick=(--quick)
  python3 benches/federation.py --chatd $BIN/chatd --loadgen $LOADGEN --work "$WORK" --out "$OUT" \
    --port-base 18110 "${quick[@]}"
}

ROWS=("$@")
[ ${#ROWS[@]} -eq 0 ] && ROWS=(idle fanout rooms longpoll durable search restart)

log "building release binaries"
cargo build -q --release -p chatd -p chat-bench -p chat-loadgen
python3 benches/machine.py >"$OUT/machine.json"
for row in "${ROWS[@]}"; do
  "row_$row"
done
stop_server
stop_cluster
pg_down
python3 benches/report.py
log "done: BENCHMARKS.md and docs/bench/*.svg"
