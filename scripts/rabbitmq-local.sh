#!/usr/bin/env bash
# A private RabbitMQ node for a fleet on one host, from Debian's rabbitmq-server package:
# every port it opens -- AMQP, the management API (Flower's queue view), Erlang distribution
# and epmd -- is bound to 127.0.0.1, its data lives in DIR, and the fleet gets its own user.
#
#   FLEET_AMQP_PASSWORD=... scripts/rabbitmq-local.sh DIR          # start (and make the user)
#   scripts/rabbitmq-local.sh DIR stop                             # stop
#
# Ports: AMQP_PORT (5672), MGMT_PORT (15672), DIST_PORT (25672), EPMD_PORT (4369).
# The password is read from the environment and never printed or put on a command line.
set -euo pipefail
dir=$(realpath -m "${1:?usage: $0 DIR [stop]}")
# stop: the ports this node was started with
[ "${2:-}" = stop ] && [ -f "$dir/ports.env" ] && . "$dir/ports.env"
amqp=${AMQP_PORT:-5672} mgmt=${MGMT_PORT:-15672}
export HOME="$dir"  # the Erlang cookie the node and rabbitmqctl share
export RABBITMQ_NODENAME=fleet@localhost
export RABBITMQ_CONFIG_FILE="$dir/rabbitmq.conf"
export RABBITMQ_ADVANCED_CONFIG_FILE="$dir/advanced.config"
export RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins"
export RABBITMQ_MNESIA_BASE="$dir/mnesia" RABBITMQ_LOG_BASE="$dir/log"
export RABBITMQ_PID_FILE="$dir/rabbitmq.pid"
export RABBITMQ_DIST_PORT=${DIST_PORT:-25672} ERL_EPMD_PORT=${EPMD_PORT:-4369}
export ERL_EPMD_ADDRESS=127.0.0.1  # epmd listens on every interface unless told
# Not /usr/sbin/rabbitmqctl: that wrapper resets HOME to the system node's (its cookie).
ctl=/usr/lib/rabbitmq/bin/rabbitmqctl

if [ "${2:-}" = stop ]; then
  timeout 60 "$ctl" stop "$RABBITMQ_PID_FILE" >/dev/null
  epmd -port "$ERL_EPMD_PORT" -kill >/dev/null 2>&1 || true  # only when no node is left
  echo "rabbitmq: stopped ($dir)"
  exit 0
fi
: "${FLEET_AMQP_PASSWORD:?set FLEET_AMQP_PASSWORD: the password of the fleet user}"
mkdir -p "$dir"
printf 'AMQP_PORT=%s MGMT_PORT=%s DIST_PORT=%s EPMD_PORT=%s\n' \
  "$amqp" "$mgmt" "$RABBITMQ_DIST_PORT" "$ERL_EPMD_PORT" > "$dir/ports.env"
cat > "$dir/rabbitmq.conf" <<CONF
listeners.tcp.default = 127.0.0.1:$amqp
management.tcp.ip = 127.0.0.1
management.tcp.port = $mgmt
CONF
# Erlang distribution (rabbitmqctl talks to the node through it) on loopback too.
echo '[{kernel, [{inet_dist_use_interface, {127,0,0,1}}]}].' > "$dir/advanced.config"
echo '[rabbitmq_management].' > "$dir/enabled_plugins"

nohup /usr/lib/rabbitmq/bin/rabbitmq-server >"$dir/server.out" 2>&1 &
"$ctl" wait --timeout 120 "$RABBITMQ_PID_FILE" >/dev/null
if ! "$ctl" list_users --silent | grep -q '^fleet\b'; then
  printf '%s\n' "$FLEET_AMQP_PASSWORD" | "$ctl" add_user fleet >/dev/null
  "$ctl" set_permissions -p / fleet '.*' '.*' '.*' >/dev/null
  "$ctl" set_user_tags fleet monitoring >/dev/null  # may read the management API
fi
"$ctl" delete_user guest >/dev/null 2>&1 || true
echo "rabbitmq: up in $dir (AMQP 127.0.0.1:$amqp, management 127.0.0.1:$mgmt)"
echo "use it with:"
echo "  export FLEET_BROKER_URL=\"amqp://fleet:\$FLEET_AMQP_PASSWORD@127.0.0.1:$amqp//\""
echo "  export FLEET_FLOWER_BROKER_API=\"http://fleet:\$FLEET_AMQP_PASSWORD@127.0.0.1:$mgmt/api/\""
