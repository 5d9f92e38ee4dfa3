#!/usr/bin/env bash
# A BRSKI pledge (RFC 8995) made only of curl and openssl: it signs a voucher request with its
# IDevID (`openssl cms -sign`), asks the registrar for a voucher while it trusts it only
# provisionally, verifies the voucher against its maker's MASA certificate (`openssl cms
# -verify`) and checks its serial and nonce, then trusts the domain CA the voucher pins: it
# reports the voucher accepted, enrolls over EST (scripts/est-client.sh) and reports its
# enrollment.
#
# Environment: BRSKI (https://HOST:PORT), IDEVID_CERT and IDEVID_KEY (PEM),
# MANUFACTURER_ROOT and MASA_CERT (PEM, burned in at the factory), SERIAL, WORK (a directory),
# NONCED (1 when the voucher must carry the request's nonce: one from the MASA; 0 for a
# voucher the owner imported, which has an expiry instead).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$WORK"
host=${BRSKI#https://}

# The registrar's certificate as the pledge sees it in the TLS handshake (proximity).
openssl s_client -connect "$host" -servername localhost < /dev/null 2> /dev/null \
  | openssl x509 -outform DER -out registrar.der

nonce=$(openssl rand -base64 16)
created=$(date -u +%Y-%m-%dT%H:%M:%SZ)
printf '{"ietf-voucher-request:voucher":{"assertion":"proximity","created-on":"%s","serial-number":"%s","nonce":"%s","proximity-registrar-cert":"%s"}}' \
  "$created" "$SERIAL" "$nonce" "$(base64 -w0 registrar.der)" > request.json
openssl cms -sign -binary -nodetach -outform DER -in request.json -out request.der \
  -signer "$IDEVID_CERT" -inkey "$IDEVID_KEY" -econtent_type 1.2.840.113549.1.9.16.1.40

# Provisional TLS (RFC 8995 5.1): the registrar is not trusted until the voucher says so.
curl --silent --show-error --fail-with-body --insecure \
  --cert "$IDEVID_CERT" --key "$IDEVID_KEY" \
  -H "Content-Type: application/voucher-cms+json" -H "Accept: application/voucher-cms+json" \
  --data-binary @request.der -o voucher.der "$BRSKI/.well-known/brski/requestvoucher"

# Signed by the MASA (a certificate of the maker's root), for this device and request.
openssl cms -verify -inform DER -in voucher.der -CAfile "$MANUFACTURER_ROOT" -purpose any \
  -signer masa-signer.pem -out voucher.json
cmp <(openssl x509 -in masa-signer.pem -outform DER) <(openssl x509 -in "$MASA_CERT" -outform DER)
grep -qF "\"serial-number\":\"$SERIAL\"" voucher.json
if [ "$NONCED" = 1 ]; then
  grep -qF "\"nonce\":\"$nonce\"" voucher.json
else
  grep -qF '"expires-on":' voucher.json
fi
echo "voucher: $(cat voucher.json)"

# The domain CA the voucher pins: from now on the registrar is trusted through it.
grep -o '"pinned-domain-cert":"[^"]*"' voucher.json | cut -d'"' -f4 | base64 -d > pinned.der
openssl x509 -inform DER -in pinned.der -out pinned.pem

report() { # report RESOURCE CERT KEY
  curl --silent --show-error --fail-with-body --cacert pinned.pem --cert "$2" --key "$3" \
    -H "Content-Type: application/json" --data '{"version":1,"status":true}' \
    "$BRSKI/.well-known/brski/$1"
}
report voucher_status "$IDEVID_CERT" "$IDEVID_KEY"
EST="$BRSKI/.well-known/est" OWNER_ROOT="$WORK/pinned.pem" \
  bash "$here/est-client.sh"
report enrollstatus renewed.pem renewed.key
echo "pledge enrolled"
