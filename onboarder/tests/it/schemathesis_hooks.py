"""Schemathesis hooks for the onboarder's admin API: request bodies in CBOR.

Bodies the description says are bytes go as they were generated (garbage the server must
refuse with a problem, not a 5xx); anything else is encoded as CBOR.
"""

import cbor2
import schemathesis
from schemathesis.transport.serialization import serialize_binary


@schemathesis.serializer("application/cbor")
def cbor(ctx, value):
    if isinstance(value, (bytes, bytearray)):
        return {"data": bytes(value)}
    try:
        return {"data": cbor2.dumps(value)}
    except Exception:
        return {"data": serialize_binary(value)}
