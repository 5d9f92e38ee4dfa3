"""Verifies a device history bundle (`onboarder device history DEVICE --export FILE`) with
nothing but the owner root certificate, independently of the onboarder's code.

Usage: verify_history.py OWNER_ROOT_PEM BUNDLE

Checks, in order:
  1. the signer (the issuing CA certificate in the bundle) is signed by the owner root, names it
     as issuer, is a CA and is valid now;
  2. the statement (COSE_Sign1, ES256) verifies with the signer's key and is about the device the
     bundle names;
  3. every audit entry hashes (SHA-256 over its bytes) to the hash the statement lists at its
     position, with the sequence number it lists, and names the device; sequence numbers rise;
     entries that follow each other in the log name the previous one's hash; the last entry is
     at or before the signed log head, and is the head itself when its number is the head's;
  4. every part (IDevID key, voucher, LDevIDs, firmware manifests, wipe attestation, certificate
     of sanitization) hashes to the statement's list, kind by kind, with none added or missing;
  5. the wipe attestation, if any, is a COSE_Sign1 that verifies with the key of one of the
     device's LDevIDs, and the certificate of sanitization names its SHA-256.

Prints what it checked and exits 0 when everything holds, 1 otherwise.
"""
import datetime
import hashlib
import json
import sys

import cbor2
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from pycose.keys import EC2Key
from pycose.keys.curves import P256
from pycose.messages import Sign1Message

FORMAT = "onboarder-device-history/1"


class Refused(Exception):
    pass


def require(condition, why):
    if not condition:
        raise Refused(why)


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def cose_key(cert: x509.Certificate) -> EC2Key:
    public = cert.public_key()
    require(isinstance(public, ec.EllipticCurvePublicKey), "the signer's key is not EC")
    numbers = public.public_numbers()
    return EC2Key(
        crv=P256,
        x=numbers.x.to_bytes(32, "big"),
        y=numbers.y.to_bytes(32, "big"),
    )


def verify_sign1(data: bytes, cert: x509.Certificate) -> bytes:
    try:
        msg = Sign1Message.decode(data)
    except Exception as e:  # a changed byte may break the structure itself
        raise Refused(f"not a COSE_Sign1: {e}")
    msg.key = cose_key(cert)
    try:
        ok = msg.verify_signature()
    except Exception as e:
        raise Refused(f"signature: {e}")
    require(ok, "the signature does not verify")
    return msg.payload


def check_signer(root: x509.Certificate, signer: x509.Certificate):
    require(signer.issuer == root.subject, "the signer is not issued by the owner root")
    try:
        root.public_key().verify(
            signer.signature,
            signer.tbs_certificate_bytes,
            ec.ECDSA(signer.signature_hash_algorithm),
        )
    except Exception as e:
        raise Refused(f"the signer's certificate is not signed by the owner root: {e}")
    now = datetime.datetime.now(datetime.timezone.utc)
    require(
        signer.not_valid_before_utc <= now <= signer.not_valid_after_utc,
        "the signer's certificate is not valid now",
    )
    constraints = signer.extensions.get_extension_for_class(x509.BasicConstraints).value
    require(constraints.ca, "the signer is not a CA")


def main() -> int:
    root_path, bundle_path = sys.argv[1], sys.argv[2]
    with open(root_path, "rb") as f:
        root = x509.load_pem_x509_certificate(f.read())
    with open(bundle_path, "rb") as f:
        raw = f.read()
    try:
        bundle = cbor2.loads(raw)
        require(isinstance(bundle, dict), "the bundle is not a CBOR map")
        require(bundle.get("format") == FORMAT, f"format {bundle.get('format')!r}")
        device = bundle["device"]
        signer = x509.load_der_x509_certificate(bytes(bundle["signer"]))
        check_signer(root, signer)
        print(f"signer: {signer.subject.rfc4514_string()}, issued by the owner root")

        statement = cbor2.loads(verify_sign1(bytes(bundle["statement"]), signer))
        require(statement["format"] == FORMAT, "statement format")
        require(statement["device"] == device, "the statement is about another device")
        head_seq, head_hash = statement["log_head"]
        print(f"statement: signed, device {device}, log head #{head_seq}")

        listed = statement["entries"]
        entries = [bytes(e) for e in bundle["entries"]]
        require(len(entries) == len(listed), f"{len(entries)} entries, {len(listed)} signed")
        previous = None
        for i, (data, (seq, digest)) in enumerate(zip(entries, listed)):
            h = sha256(data)
            require(h == bytes(digest), f"entry {i} does not hash to the signed hash")
            entry = cbor2.loads(data)
            require(entry["seq"] == seq, f"entry {i} is #{entry['seq']}, signed as #{seq}")
            require(entry["event"].get("device") == device, f"entry #{seq} is another device's")
            if previous is not None:
                prev_seq, prev_hash = previous
                require(seq > prev_seq, f"entry #{seq} comes after #{prev_seq}")
                if seq == prev_seq + 1:
                    require(bytes(entry["prev"]) == prev_hash, f"entry #{seq} does not link to #{prev_seq}")
            previous = (seq, h)
        if previous is not None:
            require(previous[0] <= head_seq, "an entry after the signed head")
            if previous[0] == head_seq:
                require(previous[1] == bytes(head_hash), "the last entry is not the signed head")
        print(f"entries: {len(entries)}, hashes and order as signed")

        parts = {k: [bytes(b) for b in v] for k, v in bundle["parts"].items()}
        signed_parts = {k: [bytes(b) for b in v] for k, v in statement["parts"].items()}
        require(set(parts) == set(signed_parts), f"parts {sorted(parts)} != signed {sorted(signed_parts)}")
        for kind, items in parts.items():
            require(len(items) == len(signed_parts[kind]), f"{kind}: count differs")
            for j, item in enumerate(items):
                require(sha256(item) == signed_parts[kind][j], f"{kind} {j} does not hash to the signed hash")
        print("parts: " + ", ".join(f"{k} x{len(v)}" for k, v in sorted(parts.items())))

        if "wipe-attestation" in parts:
            attestation = parts["wipe-attestation"][0]
            verified = False
            for der in parts.get("ldevid", []):
                cert = x509.load_der_x509_certificate(der)
                try:
                    payload = verify_sign1(attestation, cert)
                except Refused:
                    continue
                verified = True
                wipe = cbor2.loads(payload)
                print(f"wipe attestation: signed by LDevID {cert.serial_number:x}, serial {wipe['serial-number']}")
                break
            require(verified, "the wipe attestation verifies with none of the device's LDevIDs")
            require("sanitization-certificate" in parts, "a wipe attestation without its certificate")
            certificate = json.loads(parts["sanitization-certificate"][0])
            require(
                certificate["attestation_sha256"] == sha256(attestation).hex(),
                "the certificate of sanitization names another attestation",
            )
            print("certificate of sanitization: names the attestation")
    except Refused as e:
        print(f"REFUSED: {e}")
        return 1
    except Exception as e:  # malformed input of any kind is a refusal, never a pass
        print(f"REFUSED: malformed bundle: {type(e).__name__}: {e}")
        return 1
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
