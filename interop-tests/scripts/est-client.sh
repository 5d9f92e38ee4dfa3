#!/usr/bin/env bash
# An EST client made only of curl and openssl (RFC 7030), as a device SDK or a PKI tool would
# be: it fetches the CA certificates, enrolls with its IDevID and an openssl-made key and CSR,
# checks the certificate against the owner's chain, then re-enrolls with that certificate as
# its TLS client certificate and a fresh key.
#
# Environment: EST (https://HOST:PORT/.well-known/est), OWNER_ROOT (PEM), IDEVID_CERT and
# IDEVID_KEY (PEM), SERIAL, WORK (a directory for its files).
set -euo pipefail
cd "$WORK"

est() { # est RESOURCE OUT [curl options...]
  local resource=$1 out=$2
  shift 2
  curl --silent --show-error --fail-with-body --cacert "$OWNER_ROOT" \
    -o "$out" "$@" "$EST/$resource"
}

# The CA certificates: base64 PKCS#7 certs-only.
est cacerts cacerts.b64
base64 -d cacerts.b64 > cacerts.p7
openssl pkcs7 -inform DER -in cacerts.p7 -print_certs -out cacerts.pem
grep -c "BEGIN CERTIFICATE" cacerts.pem > /dev/null

# What the server wants in a CSR.
est csrattrs csrattrs.b64
base64 -d csrattrs.b64 | openssl asn1parse -inform DER > csrattrs.txt
grep -q challengePassword csrattrs.txt

enroll() { # enroll RESOURCE NAME CLIENT_CERT CLIENT_KEY [curl options...]
  local resource=$1 name=$2 cert=$3 key=$4
  shift 4
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -keyout "$name.key" -subj "/serialNumber=$SERIAL/CN=$SERIAL" -outform DER \
    -out "$name.csr" 2> /dev/null
  base64 "$name.csr" > "$name.csr.b64"
  est "$resource" "$name.p7.b64" --cert "$cert" --key "$key" "$@" \
    -H "Content-Type: application/pkcs10" --data-binary "@$name.csr.b64"
  base64 -d "$name.p7.b64" > "$name.p7"
  openssl pkcs7 -inform DER -in "$name.p7" -print_certs -out "$name.pem"
  openssl verify -CAfile "$OWNER_ROOT" -untrusted cacerts.pem "$name.pem"
  # The certificate is for the key this client made.
  [ "$(openssl x509 -in "$name.pem" -noout -pubkey)" = "$(openssl pkey -in "$name.key" -pubout)" ]
}

enroll simpleenroll ldevid "$IDEVID_CERT" "$IDEVID_KEY"
# Re-enrollment over TLS 1.2, which many EST clients still speak.
enroll simplereenroll renewed ldevid.pem ldevid.key --tls-max 1.2
openssl x509 -in renewed.pem -noout -serial
