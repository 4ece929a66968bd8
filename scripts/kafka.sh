#!/usr/bin/env bash
# Apache Kafka (KRaft, one node in combined broker+controller mode) as weir's
# test broker, assembled from Maven Central (scripts/kafka/pom.xml) and run on
# the machine's JDK (17 or newer).
#
#   scripts/kafka.sh fetch        copy the broker's jars into the cache (once);
#                                 prints the libs dir
#   scripts/kafka.sh certs DIR    a test CA, a server and a client certificate
#                                 signed by it, and an unrelated second CA (PEM)
#   scripts/kafka.sh start DIR    fetch and certs if needed, write
#                                 DIR/server.properties, format DIR/data afresh
#                                 (SCRAM users added), start the broker in the
#                                 background, wait until it answers a Metadata
#                                 request, write and print DIR/listeners.env
#   scripts/kafka.sh stop DIR     TERM the broker (KILL after a deadline), wait
#                                 for it to exit
#
# Listeners (all on 127.0.0.1, free ports picked at start):
#   PLAINTEXT       no TLS, no SASL (also the inter-broker listener)
#   SSL             TLS, server authentication only
#   MTLS            TLS, client certificate required
#   SASL_PLAINTEXT  SASL PLAIN, SCRAM-SHA-512 and SCRAM-SHA-256, no TLS
#   SASL_SSL        the same over TLS (server auth only)
#   OAUTHBEARER     SASL OAUTHBEARER, no TLS, Kafka's unsecured JWS validator
#
# Environment:
#   WEIR_KAFKA_HOME          cache dir (default ~/.cache/weir/kafka-<version>)
#   WEIR_KAFKA_START_TIMEOUT seconds to wait for the broker (default 90)
#   WEIR_KAFKA_STOP_TIMEOUT  seconds before TERM turns into KILL (default 30)
#   WEIR_KAFKA_HEAP          -Xmx (default 512m)
#   WEIR_KAFKA_LOG_LEVEL     root log level of DIR/logs/server.log (default WARN)
#   WEIR_KAFKA_JVM_OPTS      extra JVM flags, after the defaults
#   WEIR_KAFKA_OWNER_PID     start: stop the broker once this process is gone
#                            (a test run that dies without stopping it)
#   WEIR_KAFKA_OWNER_REMOVE_DIR=1  and then remove DIR
#   JAVA_HOME                JDK to use (default: java on PATH)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
POM="$HERE/kafka/pom.xml"
KAFKA_VERSION="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$POM" | head -n1)"
CACHE="${WEIR_KAFKA_HOME:-$HOME/.cache/weir/kafka-$KAFKA_VERSION}"
LIBS="$CACHE/libs"

SCRAM_USER=weir
SCRAM_PASSWORD=weir-secret
PLAIN_USER=weir
PLAIN_PASSWORD=weir-secret
OAUTH_PRINCIPAL=weir

die() { echo "kafka.sh: $*" >&2; exit 1; }

java_bin() {
  local j
  if [[ -n "${JAVA_HOME:-}" && -x "$JAVA_HOME/bin/java" ]]; then j="$JAVA_HOME/bin/java"; else j="$(command -v java || true)"; fi
  [[ -n "$j" ]] || die "no java found (Kafka $KAFKA_VERSION needs Java 17 or newer)"
  local v
  v="$("$j" -XshowSettings:properties -version 2>&1 | sed -n 's/^ *java.specification.version = //p')"
  [[ "${v%%.*}" -ge 17 ]] 2>/dev/null || die "$j is Java $v; Kafka $KAFKA_VERSION needs Java 17 or newer"
  echo "$j"
}

# Installs a Debian package when this is root or has sudo (as scripts/setup.sh).
apt_install() { # package
  local sudo=()
  if [[ "$(id -u)" != 0 ]]; then
    command -v sudo >/dev/null || return 0
    sudo=(sudo)
  fi
  echo "kafka.sh: installing $1" >&2
  "${sudo[@]}" apt-get update -qq && "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$1" >/dev/null
}

# --- fetch -------------------------------------------------------------------
cmd_fetch() {
  local stamp
  stamp="$(sha256sum "$POM" | cut -d' ' -f1)"
  if [[ -f "$LIBS/.complete" && "$(cat "$LIBS/.complete")" == "$stamp" ]]; then
    echo "$LIBS"
    return
  fi
  command -v mvn >/dev/null || apt_install maven
  command -v mvn >/dev/null || die "mvn not found (apt-get install maven)"
  mkdir -p "$CACHE"
  rm -rf "$LIBS.tmp"
  echo "kafka.sh: fetching Apache Kafka $KAFKA_VERSION from Maven Central into $LIBS" >&2
  local rc=0
  # (Maven 3.8's -q still prints colour resets: strip them.)
  mvn -q -B -f "$POM" dependency:copy-dependencies -DoutputDirectory="$LIBS.tmp" -DincludeScope=runtime 2>&1 |
    sed -e 's/\x1b\[[0-9;]*m//g' -e '/^[[:space:]]*$/d' >&2 || rc=$?
  ((rc == 0)) || die "mvn dependency:copy-dependencies failed (exit $rc)"
  ls "$LIBS.tmp"/kafka_2.13-"$KAFKA_VERSION".jar >/dev/null || die "kafka_2.13-$KAFKA_VERSION.jar missing after mvn"
  echo "$stamp" >"$LIBS.tmp/.complete"
  rm -rf "$LIBS"
  mv "$LIBS.tmp" "$LIBS"
  echo "$LIBS"
}

# --- certs -------------------------------------------------------------------
# ca.pem/ca.key            the test CA (trusted by broker and clients)
# server.pem/server.key    localhost, 127.0.0.1; server-keystore.pem = key+chain
# client.pem/client.key    CN=weir-client (for MTLS)
# other-ca.pem/.key        an unrelated CA; other-client.pem/.key signed by it
cmd_certs() {
  local dir="${1:?usage: kafka.sh certs DIR}"
  command -v openssl >/dev/null || die "openssl not found"
  mkdir -p "$dir"
  dir="$(cd "$dir" && pwd)"
  (
    cd "$dir"
    umask 077
    ca() { # name cn
      openssl req -x509 -newkey rsa:2048 -nodes -keyout "$1.key" -out "$1.pem" -days 3650 \
        -subj "/CN=$2" -addext basicConstraints=critical,CA:TRUE \
        -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null
    }
    leaf() { # name cn ca ext
      openssl req -newkey rsa:2048 -nodes -keyout "$1.key" -out "$1.csr" -subj "/CN=$2" 2>/dev/null
      printf '%b' "$4" >"$1.ext"
      openssl x509 -req -in "$1.csr" -CA "$3.pem" -CAkey "$3.key" -set_serial "0x$(openssl rand -hex 16)" \
        -days 3650 -out "$1.pem" -extfile "$1.ext" 2>/dev/null
      rm -f "$1.csr" "$1.ext"
    }
    ca ca weir-test-ca
    leaf server localhost ca \
      'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n'
    leaf client weir-client ca \
      'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n'
    ca other-ca weir-untrusted-ca
    leaf other-client weir-client other-ca \
      'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n'
    # Kafka's PEM keystore: the PKCS#8 private key and the certificate chain in one file.
    cat server.key server.pem ca.pem >server-keystore.pem
    openssl verify -CAfile ca.pem server.pem client.pem >/dev/null
    chmod 644 ./*.pem
    chmod 600 server-keystore.pem
  )
  echo "$dir"
}

# --- start -------------------------------------------------------------------
free_ports() { # n: n distinct free loopback ports, one a line
  python3 - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
for s in socks:
    print(s.getsockname()[1])
EOF
}

# A process that exists and is not a zombie (the broker is this shell's child
# while 'start' runs, so kill -0 alone would take a dead one for alive).
alive() { # pid
  [[ -r "/proc/$1/status" ]] && ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null
}

pid_alive() { # dir
  local pid
  [[ -f "$1/kafka.pid" ]] || return 1
  pid="$(cat "$1/kafka.pid")"
  [[ -n "$pid" && -r "/proc/$pid/cmdline" ]] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF "kafka.Kafka $1/server.properties"
}

# A Metadata v4 request on the PLAINTEXT port; true when the answer lists
# broker 1. (Kafka 4 dropped Metadata v0-v3.)
metadata_ok() { # port
  local out
  out="$(
    exec 2>/dev/null 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
    # size=19 | api_key=3 api_version=4 correlation_id=1 client_id="weir" | topics=[] allow_auto_topic_creation=false
    printf '\x00\x00\x00\x13\x00\x03\x00\x04\x00\x00\x00\x01\x00\x04weir\x00\x00\x00\x00\x00' >&3
    # size(4) correlation_id(4) throttle_time_ms(4) brokers.length(4) brokers[0].node_id(4)
    timeout 5 head -c 20 <&3 | od -An -tx1 | tr -d ' \n'
  )" || return 1
  [[ "${out:8:8}" == 00000001 && "${out:24:8}" != 00000000 && "${out:32:8}" == 00000001 ]]
}

cmd_start() {
  local dir="${1:?usage: kafka.sh start DIR}"
  mkdir -p "$dir"
  dir="$(cd "$dir" && pwd)"
  if pid_alive "$dir"; then die "a broker is already running from $dir (pid $(cat "$dir/kafka.pid")); stop it first"; fi
  local java libs
  java="$(java_bin)"
  libs="$(cmd_fetch)"
  [[ -f "$dir/certs/ca.pem" && -f "$dir/certs/server-keystore.pem" ]] || cmd_certs "$dir/certs" >/dev/null
  local certs="$dir/certs"

  local ports
  mapfile -t ports < <(free_ports 7)
  local p_plain=${ports[0]} p_ssl=${ports[1]} p_mtls=${ports[2]} p_sasl=${ports[3]} \
    p_sasl_ssl=${ports[4]} p_oauth=${ports[5]} p_ctl=${ports[6]}

  rm -rf "$dir/data" "$dir/logs" "$dir/listeners.env"
  mkdir -p "$dir/data" "$dir/logs"

  local plain_jaas="org.apache.kafka.common.security.plain.PlainLoginModule required user_${PLAIN_USER}=\"${PLAIN_PASSWORD}\";"
  local scram_jaas="org.apache.kafka.common.security.scram.ScramLoginModule required;"
  local oauth_jaas="org.apache.kafka.common.security.oauthbearer.OAuthBearerLoginModule required unsecuredLoginStringClaim_sub=\"broker\";"

  cat >"$dir/server.properties" <<EOF
# Written by scripts/kafka.sh start: weir's test broker (Apache Kafka $KAFKA_VERSION, KRaft combined mode).
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:$p_ctl
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT

listeners=PLAINTEXT://127.0.0.1:$p_plain,SSL://127.0.0.1:$p_ssl,MTLS://127.0.0.1:$p_mtls,SASL_PLAINTEXT://127.0.0.1:$p_sasl,SASL_SSL://127.0.0.1:$p_sasl_ssl,OAUTHBEARER://127.0.0.1:$p_oauth,CONTROLLER://127.0.0.1:$p_ctl
advertised.listeners=PLAINTEXT://127.0.0.1:$p_plain,SSL://127.0.0.1:$p_ssl,MTLS://127.0.0.1:$p_mtls,SASL_PLAINTEXT://127.0.0.1:$p_sasl,SASL_SSL://127.0.0.1:$p_sasl_ssl,OAUTHBEARER://127.0.0.1:$p_oauth
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,SSL:SSL,MTLS:SSL,SASL_PLAINTEXT:SASL_PLAINTEXT,SASL_SSL:SASL_SSL,OAUTHBEARER:SASL_PLAINTEXT,CONTROLLER:PLAINTEXT

# TLS (every SSL and SASL_SSL listener): PEM files made by 'kafka.sh certs'.
ssl.keystore.type=PEM
ssl.keystore.location=$certs/server-keystore.pem
ssl.truststore.type=PEM
ssl.truststore.location=$certs/ca.pem
ssl.client.auth=none
listener.name.mtls.ssl.client.auth=required

# SASL: PLAIN (user list in its JAAS line) and SCRAM-SHA-512 / SCRAM-SHA-256
# (credentials added to the metadata log at format time).
listener.name.sasl_plaintext.sasl.enabled.mechanisms=PLAIN,SCRAM-SHA-512,SCRAM-SHA-256
listener.name.sasl_plaintext.plain.sasl.jaas.config=$plain_jaas
listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config=$scram_jaas
listener.name.sasl_plaintext.scram-sha-256.sasl.jaas.config=$scram_jaas
listener.name.sasl_ssl.sasl.enabled.mechanisms=PLAIN,SCRAM-SHA-512,SCRAM-SHA-256
listener.name.sasl_ssl.plain.sasl.jaas.config=$plain_jaas
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=$scram_jaas
listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config=$scram_jaas
# OAUTHBEARER with Kafka's unsecured JWS validator (the default server callback
# handler when no JWKS endpoint is configured): any unsigned token is accepted.
listener.name.oauthbearer.sasl.enabled.mechanisms=OAUTHBEARER
listener.name.oauthbearer.oauthbearer.sasl.jaas.config=$oauth_jaas

# For tests.
log.dirs=$dir/data
auto.create.topics.enable=false
num.partitions=1
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
log.segment.bytes=16777216
log.retention.check.interval.ms=300000
num.network.threads=2
num.io.threads=2
num.recovery.threads.per.data.dir=1
background.threads=2
delete.topic.enable=true
# The controller appends a no-op record to the metadata log every 500 ms by
# default; every 5 s halves an idle test broker's CPU (~3% -> ~1.5% of a core).
metadata.max.idle.interval.ms=5000
EOF

  cat >"$dir/log4j2.xml" <<EOF
<?xml version="1.0" encoding="UTF-8"?>
<Configuration status="warn">
  <Appenders>
    <File name="server" fileName="$dir/logs/server.log">
      <PatternLayout pattern="[%d] %p %m (%c)%n"/>
    </File>
  </Appenders>
  <Loggers>
    <Root level="${WEIR_KAFKA_LOG_LEVEL:-WARN}"><AppenderRef ref="server"/></Root>
    <!-- the startup and shutdown lines, whatever the root level -->
    <Logger name="kafka.server.KafkaRaftServer" level="INFO"/>
    <Logger name="kafka.Kafka" level="INFO"/>
  </Loggers>
</Configuration>
EOF

  local jvm=(
    "-Xmx${WEIR_KAFKA_HEAP:-512m}" -Xms256m -XX:+UseSerialGC -XX:+ExitOnOutOfMemoryError
    -XX:TieredStopAtLevel=1
    -Djava.awt.headless=true
    "-Dlog4j2.configurationFile=$dir/log4j2.xml"
    "-Dkafka.logs.dir=$dir/logs"
    -cp "$libs/*"
  )
  # Extra JVM flags, after ours so that they win (e.g. -XX:TieredStopAtLevel=4).
  local extra=()
  read -r -a extra <<<"${WEIR_KAFKA_JVM_OPTS:-}"
  jvm=("${jvm[@]:0:${#jvm[@]}-2}" "${extra[@]}" -cp "$libs/*")

  local cluster_id
  # A cluster id is 16 random bytes in URL-safe base64; one that starts with
  # '-' would be read as an option by the storage tool (Kafka's own
  # Uuid.randomUuid() avoids those too).
  cluster_id=-
  while [[ "$cluster_id" == -* ]]; do
    cluster_id="$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=')"
  done
  if ! "$java" "${jvm[@]}" kafka.tools.StorageTool format --standalone -t "$cluster_id" \
    -c "$dir/server.properties" \
    --add-scram "SCRAM-SHA-512=[name=$SCRAM_USER,password=$SCRAM_PASSWORD]" \
    --add-scram "SCRAM-SHA-256=[name=$SCRAM_USER,password=$SCRAM_PASSWORD]" \
    >"$dir/logs/format.log" 2>&1; then
    cat "$dir/logs/format.log" >&2
    die "formatting $dir/data failed"
  fi

  # setsid: the broker gets a session of its own, so a signal to the caller's
  # process group (Ctrl-C on a test run) does not reach it; 'stop' ends it.
  setsid "$java" "${jvm[@]}" kafka.Kafka "$dir/server.properties" \
    >"$dir/logs/kafka.out" 2>&1 </dev/null &
  local pid=$!
  echo "$pid" >"$dir/kafka.pid"

  local deadline=$((SECONDS + ${WEIR_KAFKA_START_TIMEOUT:-90}))
  local ready=0
  while ((SECONDS < deadline)); do
    if ! alive "$pid"; then break; fi
    if grep -q "Kafka Server started" "$dir/logs/server.log" 2>/dev/null && metadata_ok "$p_plain"; then
      ready=1
      break
    fi
    sleep 0.2
  done
  if ((ready == 0)); then
    echo "kafka.sh: the broker did not become ready (pid $pid); last lines of its logs:" >&2
    tail -n 40 "$dir/logs/server.log" >&2 2>/dev/null || true
    tail -n 20 "$dir/logs/kafka.out" >&2 2>/dev/null || true
    cmd_stop "$dir" >/dev/null 2>&1 || true
    exit 1
  fi

  cat >"$dir/listeners.env.tmp" <<EOF
KAFKA_VERSION=$KAFKA_VERSION
PLAINTEXT=127.0.0.1:$p_plain
SSL=127.0.0.1:$p_ssl
MTLS=127.0.0.1:$p_mtls
SASL_PLAINTEXT=127.0.0.1:$p_sasl
SASL_SSL=127.0.0.1:$p_sasl_ssl
OAUTHBEARER=127.0.0.1:$p_oauth
CA=$certs/ca.pem
CLIENT_CERT=$certs/client.pem
CLIENT_KEY=$certs/client.key
OTHER_CA=$certs/other-ca.pem
OTHER_CLIENT_CERT=$certs/other-client.pem
OTHER_CLIENT_KEY=$certs/other-client.key
SCRAM_USER=$SCRAM_USER
SCRAM_PASSWORD=$SCRAM_PASSWORD
PLAIN_USER=$PLAIN_USER
PLAIN_PASSWORD=$PLAIN_PASSWORD
OAUTH_PRINCIPAL=$OAUTH_PRINCIPAL
KAFKA_PID=$pid
KAFKA_LOG=$dir/logs/server.log
EOF
  mv "$dir/listeners.env.tmp" "$dir/listeners.env"
  if [[ -n "${WEIR_KAFKA_OWNER_PID:-}" ]]; then
    watch_owner "$WEIR_KAFKA_OWNER_PID" "$dir"
  fi
  cat "$dir/listeners.env"
}

# Stops the broker of DIR once process OWNER has exited. Detached, with no
# stdio: whoever reads start's output sees it end.
watch_owner() { # owner dir
  local owner="$1" dir="$2"
  setsid bash -c '
    while kill -0 "$1" 2>/dev/null; do sleep 1; done
    "$2" stop "$3"
    if [[ "$4" == 1 ]]; then rm -rf "$3"; fi
  ' watch "$owner" "$HERE/kafka.sh" "$dir" "${WEIR_KAFKA_OWNER_REMOVE_DIR:-0}" </dev/null >/dev/null 2>&1 &
}

# --- stop --------------------------------------------------------------------
cmd_stop() {
  local dir="${1:?usage: kafka.sh stop DIR}"
  [[ -d "$dir" ]] || die "no such dir: $dir"
  dir="$(cd "$dir" && pwd)"
  if ! pid_alive "$dir"; then
    rm -f "$dir/kafka.pid"
    echo "kafka.sh: no broker running from $dir" >&2
    return 0
  fi
  local pid
  pid="$(cat "$dir/kafka.pid")"
  kill -TERM "$pid" 2>/dev/null || true
  local deadline=$((SECONDS + ${WEIR_KAFKA_STOP_TIMEOUT:-30}))
  while alive "$pid" && ((SECONDS < deadline)); do sleep 0.2; done
  if alive "$pid"; then
    echo "kafka.sh: broker $pid still up after TERM; sending KILL" >&2
    kill -KILL "$pid" 2>/dev/null || true
    while alive "$pid"; do sleep 0.1; done
  fi
  rm -f "$dir/kafka.pid"
  echo "kafka.sh: broker $pid stopped" >&2
}

case "${1:-}" in
  fetch) cmd_fetch ;;
  certs) shift; cmd_certs "$@" ;;
  start) shift; cmd_start "$@" ;;
  stop) shift; cmd_stop "$@" ;;
  *) echo "usage: $0 fetch | certs DIR | start DIR | stop DIR" >&2; exit 2 ;;
esac
