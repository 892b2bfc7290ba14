#!/usr/bin/env bash
# A throwaway CA, one certificate every process presents (server and client), and a token per
# role, for local runs and tests:
#   DIR/tls/ca.crt, DIR/tls/tls.crt, DIR/tls/tls.key   (the chart's TLS Secret keys)
#   DIR/tokens/{actor,learner,evaluator,admin}          (the chart's token Secret keys)
# The certificate names localhost and 127.0.0.1, plus any --san DNS name or IP given.
# Usage: scripts/make-certs.sh DIR [--san NAME]...
set -euo pipefail
dir="${1:?usage: make-certs.sh DIR [--san NAME]...}"
shift
sans="DNS:localhost,IP:127.0.0.1"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --san)
      if [[ "$2" =~ ^[0-9.]+$ || "$2" == *:* ]]; then sans="$sans,IP:$2"; else sans="$sans,DNS:$2"; fi
      shift 2 ;;
    *) echo "make-certs.sh: unknown argument $1" >&2; exit 64 ;;
  esac
done
command -v openssl >/dev/null || { echo "make-certs.sh: openssl is needed (apt-get install openssl)" >&2; exit 69; }
mkdir -p "$dir/tls" "$dir/tokens"
umask 077
tls="$dir/tls"
openssl ecparam -name prime256v1 -genkey -noout -out "$tls/ca.key" 2>/dev/null
openssl req -x509 -new -key "$tls/ca.key" -sha256 -days 30 -subj "/CN=troupe local CA" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
  -out "$tls/ca.crt" 2>/dev/null
openssl ecparam -name prime256v1 -genkey -noout -out "$tls/key.sec1" 2>/dev/null
openssl pkcs8 -topk8 -nocrypt -in "$tls/key.sec1" -out "$tls/tls.key"
rm -f "$tls/key.sec1"
openssl req -new -key "$tls/tls.key" -subj "/CN=troupe" -out "$tls/tls.csr" 2>/dev/null
cat > "$tls/ext.cnf" <<CNF
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth,clientAuth
subjectAltName=$sans
CNF
openssl x509 -req -in "$tls/tls.csr" -CA "$tls/ca.crt" -CAkey "$tls/ca.key" -CAcreateserial \
  -days 30 -sha256 -extfile "$tls/ext.cnf" -out "$tls/tls.crt" 2>/dev/null
rm -f "$tls/tls.csr" "$tls/ext.cnf" "$tls/ca.srl"
for role in actor learner evaluator admin; do
  openssl rand -hex 24 > "$dir/tokens/$role"
done
