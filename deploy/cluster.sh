#!/usr/bin/env bash
# A three-node RabbitMQ cluster on this host, for trying Warren's broker failover:
#
#   deploy/cluster.sh up      # start three nodes and join them; prints WARREN_AMQP_URL
#   deploy/cluster.sh status  # cluster_status of the first node
#   deploy/cluster.sh down    # stop the nodes and remove their folder
#
# The nodes are separate from the machine's own RabbitMQ (rabbit@localhost, port 5672): each
# runs from /usr/lib/rabbitmq/bin (not the /usr/sbin wrapper, which switches to the system
# node's user and cookie) with its own node name, ports, database, logs and configuration
# under $WARREN_CLUSTER_DIR (default /tmp/warren-cluster), and one Erlang cookie shared by the
# three. Ports: AMQP 5701-5703, Erlang distribution 25701-25703 (WARREN_CLUSTER_PORT_BASE moves
# both). Works as root or as a user who can run RabbitMQ; needs rabbitmq-server installed.
#
# Give workers and producers every node: WARREN_AMQP_URL takes a comma-separated list, and a
# client fails over to the next node when its own dies. Kill one (kill -9 the pid in
# $DIR/nodeN/pid) and watch the workers carry on; `up` again restarts missing nodes.
set -euo pipefail

DIR=${WARREN_CLUSTER_DIR:-/tmp/warren-cluster}
BASE=${WARREN_CLUSTER_PORT_BASE:-5700}
BIN=/usr/lib/rabbitmq/bin
NODES=(1 2 3)

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

node_name() { echo "warren-cluster-$1@localhost"; }

# The environment of node $1, one VAR=value a line.
node_env() {
  local n=$1 d="$DIR/node$1"
  cat <<EOF
PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin
LANG=C.UTF-8
HOME=$DIR/home
RABBITMQ_NODENAME=$(node_name "$n")
RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
RABBITMQ_NODE_PORT=$((BASE + n))
RABBITMQ_DIST_PORT=$((BASE + 20000 + n))
RABBITMQ_CONFIG_FILE=$d/rabbitmq.conf
RABBITMQ_MNESIA_BASE=$d/mnesia
RABBITMQ_LOG_BASE=$d/log
RABBITMQ_PID_FILE=$d/pid
RABBITMQ_ENABLED_PLUGINS_FILE=$d/enabled_plugins
RABBITMQ_CONF_ENV_FILE=$d/rabbitmq-env.conf
ERL_EPMD_ADDRESS=127.0.0.1
RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS=-kernel inet_dist_use_interface {127,0,0,1}
EOF
}

# Runs RabbitMQ script $1 with node $2's environment (and nothing of the caller's).
with_env() {
  local script=$1 n=$2 vars
  shift 2
  mapfile -t vars < <(node_env "$n")
  env -i "${vars[@]}" "$BIN/$script" "$@"
}

ctl() { local n=$1; shift; with_env rabbitmqctl "$n" -n "$(node_name "$n")" "$@"; }

running() { ctl "$1" status >/dev/null 2>&1; }

prepare() {
  mkdir -p "$DIR/home"
  if [ ! -f "$DIR/home/.erlang.cookie" ]; then
    head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$DIR/home/.erlang.cookie"
    chmod 400 "$DIR/home/.erlang.cookie"
  fi
  local n d
  for n in "${NODES[@]}"; do
    d="$DIR/node$n"
    mkdir -p "$d/mnesia" "$d/log"
    : >"$d/rabbitmq-env.conf"
    echo '[].' >"$d/enabled_plugins"
    echo "listeners.tcp.default = 127.0.0.1:$((BASE + n))" >"$d/rabbitmq.conf"
  done
}

start_node() {
  local n=$1
  if running "$n"; then log "node $n is running"; return 0; fi
  log "starting node $n ($(node_name "$n"), port $((BASE + n)))"
  rm -f "$DIR/node$n/pid"
  local vars
  mapfile -t vars < <(node_env "$n")
  # A session of its own, so that the node outlives this script.
  setsid env -i "${vars[@]}" "$BIN/rabbitmq-server" >>"$DIR/node$n/server.out" 2>&1 </dev/null &
  ctl "$n" wait --timeout 60 "$DIR/node$n/pid" >/dev/null
}

up() {
  prepare
  local n
  for n in "${NODES[@]}"; do start_node "$n"; done
  local seed
  seed=$(node_name 1)
  for n in "${NODES[@]:1}"; do
    if ctl 1 cluster_status 2>/dev/null | grep -q "$(node_name "$n")"; then continue; fi
    log "joining node $n to $seed"
    ctl "$n" stop_app >/dev/null
    ctl "$n" join_cluster "$seed" >/dev/null
    ctl "$n" start_app >/dev/null
  done
  local urls=()
  for n in "${NODES[@]}"; do urls+=("amqp://guest:guest@127.0.0.1:$((BASE + n))/%2f"); done
  log "three nodes up and clustered; quorum queues Warren declares get a replica on each"
  (IFS=,; echo "export WARREN_AMQP_URL='${urls[*]}'")
}

down() {
  local n pid
  for n in "${NODES[@]}"; do
    if running "$n"; then
      log "stopping node $n"
      ctl "$n" stop >/dev/null 2>&1 || true
    fi
    pid=$(cat "$DIR/node$n/pid" 2>/dev/null || true)
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid" || true; fi
  done
  rm -rf "$DIR"
  log "cluster removed"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) ctl 1 cluster_status ;;
  *)
    echo "usage: $0 up|status|down" >&2
    exit 2
    ;;
esac
