"""Content identifiers: CIDv1, raw codec, sha2-256 (multiformats), and the contract's
32-byte digest form of the same CID.

Every CID we make has one shape: multibase "b" (base32, lower case, no padding) over
the bytes 0x01 (CIDv1), 0x55 (raw), 0x12 (sha2-256), 0x20 (32 bytes) and the digest.
`cid_from_digest` and `digest_of` code that shape directly, since `multiformats`
took 2-3 ms a CID in its type validation (a third of a second of every robustness
cell); anything else (another base, version or hash, a malformed string) goes
through `multiformats`, which decides what it is and words the error.
"""

from __future__ import annotations

import base64
import binascii
import hashlib

from multiformats import CID, multihash


class CIDError(ValueError):
    """A CID string that is not a CIDv1 raw sha2-256 identifier."""


def cid_of(data: bytes) -> str:
    return str(cid_from_digest(hashlib.sha256(data).digest()))


_PREFIX = bytes([0x01, 0x55, 0x12, 0x20])  # CIDv1, raw, sha2-256, 32 bytes


def _base32(raw: bytes) -> str:
    return "b" + base64.b32encode(raw).decode("ascii").rstrip("=").lower()


def cid_from_digest(digest: bytes) -> str:
    if len(digest) != 32:
        raise CIDError(f"a sha2-256 digest is 32 bytes, got {len(digest)}")
    return _base32(_PREFIX + digest)


def _our_shape(cid: str) -> bytes | None:
    """The digest of a CID in exactly the form `cid_from_digest` writes, else None."""
    if len(cid) != 59 or not cid.startswith("b"):
        return None
    try:
        raw = base64.b32decode(cid[1:].upper() + "======")
    except (binascii.Error, ValueError):
        return None
    if not raw.startswith(_PREFIX) or _base32(raw) != cid:  # a non-canonical spelling
        return None
    return raw[len(_PREFIX) :]


def digest_of(cid: str) -> bytes:
    """The sha2-256 digest inside `cid` (what the contract stores)."""
    if isinstance(cid, str) and (digest := _our_shape(cid)) is not None:
        return digest
    try:
        c = CID.decode(cid)
    except Exception as e:  # noqa: BLE001 - any decode failure is a bad CID
        raise CIDError(f"not a CID: {cid!r} ({e})") from None
    if c.version != 1 or c.codec.name != "raw" or c.hashfun.name != "sha2-256":
        raise CIDError(f"{cid}: expected CIDv1 raw sha2-256, got v{c.version} {c.codec.name} {c.hashfun.name}")
    return bytes(multihash.unwrap(c.digest))


def matches(cid: str, data: bytes) -> bool:
    return hashlib.sha256(data).digest() == digest_of(cid)
