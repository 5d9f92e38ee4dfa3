"""Verifies a firmware manifest (COSE_Sign1, EdDSA) with pycose, using only the public key.

Usage: verify_manifest.py MANIFEST FIRMWARE_PUB_PEM
Prints the decoded payload fields and exits 0 when the signature verifies, 1 when it does not.
"""
import sys

import cbor2
from cryptography.hazmat.primitives import serialization
from pycose.keys import OKPKey
from pycose.keys.curves import Ed25519
from pycose.messages import Sign1Message


def main() -> int:
    manifest_path, key_path = sys.argv[1], sys.argv[2]
    with open(manifest_path, "rb") as f:
        data = f.read()
    with open(key_path, "rb") as f:
        public = serialization.load_pem_public_key(f.read())
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    try:
        msg = Sign1Message.decode(data)
    except Exception as e:  # a corrupted message may not even decode
        print(f"decode failed: {e}")
        return 1
    msg.key = OKPKey(crv=Ed25519, x=raw)
    try:
        ok = msg.verify_signature()
    except Exception as e:
        print(f"verification error: {e}")
        return 1
    if not ok:
        print("signature does not verify")
        return 1
    payload = cbor2.loads(msg.payload)
    for field in ("vendor-id", "class-id", "sequence-number", "version", "image-size"):
        print(f"{field}={payload[field]}")
    print(f"image-digest={payload['image-digest'].hex()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
