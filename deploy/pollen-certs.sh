#!/usr/bin/env bash
# Certificates and SuperNode keys for a Pollen deployment (Flower 1.39), made with openssl
# and ssh-keygen.
#
#   deploy/pollen-certs.sh certs OUT_DIR NUM_NODES [SAN ...]
#       OUT_DIR/ca.crt, ca.key                the deployment's own certificate authority
#       OUT_DIR/superlink.crt, superlink.key  the SuperLink's TLS certificate, signed by the
#                                             CA, valid for localhost, 127.0.0.1, the compose
#                                             service names "superlink" and "registry" (the
#                                             adapter registry serves the same certificate)
#                                             and every extra SAN given (e.g.
#                                             DNS:fl.example.org IP:10.0.0.5)
#       OUT_DIR/registry-token                the adapter registry's publish token
#       OUT_DIR/node-<i>, node-<i>.pub        SuperNode key pairs (ECDSA P-384, OpenSSH
#                                             format, as flower-supernode and flwr expect)
#   deploy/pollen-certs.sh register CONNECTION PUBLIC_KEY ...
#       registers SuperNode public keys with a running SuperLink started with
#       --enable-supernode-auth (CONNECTION is a [superlink.<name>] of $FLWR_HOME/config.toml)
set -euo pipefail

usage() { sed -n '2,18p' "$0" >&2; exit 2; }

make_certs() {
  local out=$1 nodes=$2; shift 2
  [[ $nodes =~ ^[0-9]+$ ]] || { echo "NUM_NODES must be a number, got '$nodes'" >&2; exit 2; }
  mkdir -p "$out"
  local sans="DNS:localhost,IP:127.0.0.1,DNS:superlink,DNS:registry"
  for san in "$@"; do
    [[ $san == DNS:* || $san == IP:* ]] || { echo "a SAN must start with DNS: or IP:, got '$san'" >&2; exit 2; }
    sans="$sans,$san"
  done
  openssl req -x509 -newkey rsa:4096 -sha256 -days 365 -nodes -subj "/CN=Pollen CA" \
    -keyout "$out/ca.key" -out "$out/ca.crt" 2>/dev/null
  openssl req -newkey rsa:4096 -sha256 -nodes -subj "/CN=superlink" \
    -keyout "$out/superlink.key" -out "$out/superlink.csr" 2>/dev/null
  openssl x509 -req -in "$out/superlink.csr" -CA "$out/ca.crt" -CAkey "$out/ca.key" \
    -CAcreateserial -days 365 -sha256 -out "$out/superlink.crt" \
    -extfile <(printf "subjectAltName=%s\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n" "$sans") 2>/dev/null
  rm -f "$out/superlink.csr" "$out/ca.srl"
  [[ -s "$out/registry-token" ]] || openssl rand -hex 32 > "$out/registry-token"
  for ((i = 1; i <= nodes; i++)); do
    rm -f "$out/node-$i" "$out/node-$i.pub"
    ssh-keygen -q -t ecdsa -b 384 -N "" -C "pollen-node-$i" -f "$out/node-$i"
  done
  chmod 600 "$out"/*.key "$out"/node-* "$out/registry-token" 2>/dev/null || true
  chmod 644 "$out"/*.crt "$out"/node-*.pub
  echo "wrote $out: ca.crt, superlink.crt/.key (SANs $sans), registry-token, $nodes SuperNode key pair(s)"
}

register() {
  local connection=$1; shift
  for key in "$@"; do
    flwr supernode register "$key" "$connection"
  done
}

case "${1:-}" in
  certs) [[ $# -ge 3 ]] || usage; shift; make_certs "$@" ;;
  register) [[ $# -ge 3 ]] || usage; shift; register "$@" ;;
  *) usage ;;
esac
