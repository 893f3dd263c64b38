# Shared by the benchmark scripts: `source benches/lib.sh` after `cd` to the repository root.
#   aidos_bin                     sets AIDOS (AIDOS_BIN, else builds the release binary)
#   bench_dir                     sets DIR (a temp dir) and PIDS, and kills PIDS (and the tasks under DIR) and
#                                 removes DIR on exit
#   port                          prints a free loopback port
#   start_aidos_node CPUS         one `aidos server` node and one worker of CPUS cores on loopback; exports
#                                 AIDOS_SCHEDULER and AIDOS_TOKEN (the root token) and waits for both
#   start_aidos_cluster [FLAGS]   3 `aidos server` nodes on loopback sharing one blob directory, with FLAGS each;
#                                 exports AIDOS_SCHEDULER and AIDOS_TOKEN and waits for a leader; sets LEADER

aidos_bin() {
    if [[ -n "${AIDOS_BIN:-}" ]]; then AIDOS="$AIDOS_BIN"; else cargo build --release --bin aidos; AIDOS=target/release/aidos; fi
}

bench_dir() {
    DIR="$(mktemp -d)"
    PIDS=()
    trap 'for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done; kill_tasks_under "$DIR"; rm -rf "$DIR"' EXIT
}

# Tasks outlive their worker by design (a restarted worker adopts them), so killing the workers leaves them running:
# kills every process whose command line (task shims) or AIDOS_WORK_DIR (tasks) is under directory $1.
kill_tasks_under() {
    local p
    for p in /proc/[0-9]*; do
        [[ "${p#/proc/}" == "$$" ]] && continue
        if grep -qsF -- "$1/" "$p/cmdline" || { tr '\0' '\n' <"$p/environ"; } 2>/dev/null | grep -qsF "AIDOS_WORK_DIR=$1/"; then
            kill -9 "${p#/proc/}" 2>/dev/null || true
        fi
    done
}

# The cluster's root token, made before any node starts (nodes given a missing --admin-token-file would each make
# their own), and presented by every CLI call and worker of the bench.
admin_token() {
    python3 -c 'import secrets; print("aidos_root_" + secrets.token_hex(32))' >"$DIR/admin.token"
    chmod 600 "$DIR/admin.token"
    export AIDOS_TOKEN="$(cat "$DIR/admin.token")"
}

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

start_aidos_cluster() {
    local p1 p2 p3 peers i p deadline
    p1=$(port); p2=$(port); p3=$(port)
    peers="1=127.0.0.1:$p1,2=127.0.0.1:$p2,3=127.0.0.1:$p3"
    admin_token
    for i in 1 2 3; do
        p=p$i
        # One machine: the nodes share one blob directory, as --blob-dir-shared declares.
        RUST_LOG="${NODE_LOG:-warn}" "$AIDOS" server --id $i --listen "127.0.0.1:${!p}" --peers "$peers" --insecure \
            --data-dir "$DIR/n$i" --blob-dir "$DIR/blobs" --blob-dir-shared --admin-token-file "$DIR/admin.token" "$@" >"$DIR/n$i.log" 2>&1 &
        PIDS+=($!); disown $!
    done
    export AIDOS_SCHEDULER="127.0.0.1:$p1,127.0.0.1:$p2,127.0.0.1:$p3"
    deadline=$((SECONDS + 60))
    until "$AIDOS" cluster status 2>/dev/null | grep -q '^leader: *[1-3]'; do
        (( SECONDS < deadline )) || { echo "no leader"; cat "$DIR"/n*.log; exit 1; }
        sleep 0.3
    done
    LEADER=$("$AIDOS" cluster status | awk '/^leader:/ {print $2}')
}

start_aidos_node() {
    local p
    p=$(port)
    admin_token
    RUST_LOG="${NODE_LOG:-warn}" "$AIDOS" server --id 1 --listen "127.0.0.1:$p" --data-dir "$DIR/n1" \
        --blob-dir "$DIR/blobs" --admin-token-file "$DIR/admin.token" >"$DIR/n1.log" 2>&1 &
    PIDS+=($!); disown $!
    export AIDOS_SCHEDULER="127.0.0.1:$p"
    until "$AIDOS" cluster status 2>/dev/null | grep -q '^leader: *1'; do sleep 0.2; done
    RUST_LOG="${NODE_LOG:-warn}" "$AIDOS" worker --data-dir "$DIR/w1" --id w1 --cpus "$1" --memory 16Gi \
        >"$DIR/w1.log" 2>&1 &
    PIDS+=($!); disown $!
    until "$AIDOS" cluster workers 2>/dev/null | grep -q w1; do sleep 0.2; done
}
