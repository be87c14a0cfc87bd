"""Content identifiers: CIDv1, raw codec, sha2-256 (multiformats), and the contract's
32-byte digest form of the same CID."""

from __future__ import annotations

import hashlib

from multiformats import CID, multihash


class CIDError(ValueError):
    """A CID string that is not a CIDv1 raw sha2-256 identifier."""


def cid_of(data: bytes) -> str:
    return str(cid_from_digest(hashlib.sha256(data).digest()))


def cid_from_digest(digest: bytes) -> str:
    if len(digest) != 32:
        raise CIDError(f"a sha2-256 digest is 32 bytes, got {len(digest)}")
    return str(CID("base32", 1, "raw", multihash.wrap(digest, "sha2-256")))


def digest_of(cid: str) -> bytes:
    """The sha2-256 digest inside `cid` (what the contract stores)."""
    try:
        c = CID.decode(cid)
    except Exception as e:  # noqa: BLE001 - any decode failure is a bad CID
        raise CIDError(f"not a CID: {cid!r} ({e})") from None
    if c.version != 1 or c.codec.name != "raw" or c.hashfun.name != "sha2-256":
        raise CIDError(f"{cid}: expected CIDv1 raw sha2-256, got v{c.version} {c.codec.name} {c.hashfun.name}")
    return bytes(multihash.unwrap(c.digest))


def matches(cid: str, data: bytes) -> bool:
    return hashlib.sha256(data).digest() == digest_of(cid)
