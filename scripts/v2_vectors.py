#!/usr/bin/env python3
"""Independent check of the door protocol version 2 test vectors (docs/PROTOCOL.md, "Version 2").

Written from the document alone, on Python's `cryptography` package: recomputes every value of
§24 from the inputs of §24.1 and compares it with what the document lists. Prints one line per
value and a closing "N passed, M failed" line; exits 1 on any mismatch.
Run it through scripts/check-v2-vectors.sh, which provides `cryptography`.
"""
import base64
import hashlib
import hmac
import re
import sys
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF, HKDFExpand

DOC = Path(__file__).resolve().parent.parent / "docs" / "PROTOCOL.md"


def listed(doc):
    """The `| `name` | `hex` |` rows of §24 and the base64 block."""
    part = doc[doc.index("## 24. Test vectors"):]
    rows = {}
    for name, cell in re.findall(r"^\| `([a-z_0-9]+)` \| (.*) \|$", part, re.M):
        values = re.findall(r"`([0-9a-f]+)`", cell)
        if values:
            rows[name] = values[-1]
    rows["signed_grant_b64"] = re.search(r"```\n([A-Za-z0-9+/=]+)\n```", part).group(1)
    return rows


def u64(n):
    return n.to_bytes(8, "big")


def p256_key(hex_scalar):
    return ec.derive_private_key(int(hex_scalar, 16), ec.SECP256R1())


def point(key):
    return key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )


def endpoint_field(name):
    raw = name.encode()
    return bytes([len(raw)]) + raw.ljust(32, b"\0")


def main():
    doc = DOC.read_text()
    expected = listed(doc)

    # §24.1 inputs
    phone = p256_key(expected["phone_secret"])
    door = p256_key(expected["door_secret"])
    other = p256_key("33" * 32)
    gateway = ed25519.Ed25519PrivateKey.from_private_bytes(bytes.fromhex(expected["gateway_seed"]))
    door_id = bytes.fromhex(expected["door_id"])
    nonce = bytes(range(16))
    door_time, phone_time = 1767225600, 1767225612
    tool_id = bytes.fromhex("a1b2c3d4e5f64a7b8c9d0e1f2a3b4c5d")
    other_tool = bytes.fromhex("0f1e2d3c4b5a49688778695a4b3c2d1e")
    not_before, expires, epoch = 1767225000, 1767830400, 3

    got = {}
    got["phone_public"] = point(phone)
    got["door_public"] = point(door)
    got["other_phone_public"] = point(other)
    got["gateway_public"] = gateway.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    got["door_tag"] = hashlib.sha256(b"latchkey/v2/adv/door" + door_id).digest()[:5]

    # §15.1, from the phone's side; the door's side must give the same Z.
    z = phone.exchange(ec.ECDH(), door.public_key())
    assert z == door.exchange(ec.ECDH(), phone.public_key())
    got["shared_z"] = z
    hint_key = HKDF(hashes.SHA256(), 32, salt=door_id, info=b"latchkey/v2/key/hint").derive(z)
    got["hint_key"] = hint_key
    hint = hmac.new(hint_key, b"latchkey/v2/hint" + nonce, hashlib.sha256).digest()[:8]
    got["hint"] = hint
    prk = hmac.new(nonce, z, hashlib.sha256).digest()
    got["session_prk"] = prk
    to_door = HKDFExpand(hashes.SHA256(), 32, b"latchkey/v2/key/phone-to-door" + door_id).derive(prk)
    to_phone = HKDFExpand(hashes.SHA256(), 32, b"latchkey/v2/key/door-to-phone" + door_id).derive(prk)
    got["to_door"], got["to_phone"] = to_door, to_phone

    # §17
    iv = bytes(12)
    got["challenge"] = b"\x02\x01" + door_id + nonce + u64(door_time)
    body = tool_id + u64(phone_time) + endpoint_field("front-door")
    got["request_plain"] = body
    header = b"\x02\x02" + hint
    got["request"] = header + AESGCM(to_door).encrypt(iv, body, header + nonce)
    head = b"\x02\x03" + nonce
    got["result_granted"] = head + AESGCM(to_phone).encrypt(iv, b"\x00" + u64(door_time), head)
    got["result_unknown"] = b"\x02\x04" + nonce + bytes([13])

    # §19
    def grant(tool, endpoint, key):
        return (tool + door_id + endpoint_field(endpoint) + u64(not_before) + u64(expires)
                + epoch.to_bytes(4, "big") + point(key))

    g1, g2 = grant(tool_id, "front-door", phone), grant(other_tool, "garage", other)
    got["grant"] = g1
    signed = b"\x02\x11" + g1
    got["signed_grant"] = signed + gateway.sign(b"latchkey/v2/grant" + signed)
    snap = (b"\x02\x12" + door_id + u64(42) + epoch.to_bytes(4, "big") + u64(1767225000)
            + (2).to_bytes(2, "big") + g1 + g2)
    got["snapshot"] = snap + gateway.sign(b"latchkey/v2/snapshot" + snap)

    passed = failed = 0
    for name, value in got.items():
        text = value.hex()
        ok = expected.get(name) == text
        print(f"{'ok  ' if ok else 'FAIL'} {name}")
        passed, failed = passed + ok, failed + (not ok)
    b64 = base64.b64encode(got["signed_grant"]).decode()
    ok = expected["signed_grant_b64"] == b64
    print(f"{'ok  ' if ok else 'FAIL'} signed_grant_b64")
    passed, failed = passed + ok, failed + (not ok)
    # The request and result decrypt as a door and a phone would.
    assert AESGCM(to_door).decrypt(iv, got["request"][10:], header + nonce) == body
    print(f"{passed} passed, {failed} failed")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
