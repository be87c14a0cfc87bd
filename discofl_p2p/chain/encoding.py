"""The contract's wire formats, as pure functions: commitments (of models and of
scores) and packed scores.

Scores travel as one big-endian uint16 per published model: basis points in
[0, 10000], or ABSTAIN (0xFFFF) for a model the evaluator did not score (one it
could not fetch; its own model gets a decoy score, see docs/scenarios.md). Values
above 10000 other than ABSTAIN are invalid; the contract does not spend gas checking
them, so readers treat them as abstentions.
"""

from __future__ import annotations

import math
import random
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from eth_abi import encode
from eth_utils import keccak, to_canonical_address, to_checksum_address

SCORE_SCALE = 10_000
ABSTAIN = 0xFFFF
NOT_OPENED = 0xFFFF


SALT_ENTROPY_BYTES = 16
"""Random bytes in a salt (128 bits: no search can open a commitment without it)."""


def create_address(deployer: str, nonce: int) -> str:
    """The address a contract created by `deployer`'s transaction number `nonce` gets
    (CREATE: the last 20 bytes of keccak256(rlp([deployer, nonce]))). Known before the
    deployment is sent, so the requester records its task before it exists."""
    if not 0 <= nonce < 2**64:
        raise ValueError(f"nonce {nonce} out of range")
    if nonce == 0:
        n = b"\x80"
    elif nonce < 0x80:
        n = bytes([nonce])
    else:
        raw = nonce.to_bytes((nonce.bit_length() + 7) // 8, "big")
        n = bytes([0x80 + len(raw)]) + raw
    payload = b"\x94" + to_canonical_address(deployer) + n
    return to_checksum_address(keccak(bytes([0xC0 + len(payload)]) + payload)[12:])


def new_salt(rng: random.Random | None = None) -> bytes:
    """A commitment's 32-byte salt: 16 zero bytes, then 16 random bytes from the OS's
    CSPRNG (`rng` only where a benchmark must replay its figures). The zero half
    is the point: calldata costs 4 times less for a zero byte under EIP-7623's floor,
    which settlement pays (one salt per submitter), and 128 bits hide a commitment as
    well as 256 do."""
    entropy = rng.randbytes(SALT_ENTROPY_BYTES) if rng else secrets.token_bytes(SALT_ENTROPY_BYTES)
    return bytes(32 - SALT_ENTROPY_BYTES) + entropy


def commitment(contract: str, round_: int, worker: str, model_digest: bytes, salt: bytes) -> bytes:
    """keccak256(abi.encode(contract, round, worker, digest, salt)), as the contract checks it."""
    if len(model_digest) != 32 or len(salt) != 32:
        raise ValueError("model digest and salt must be 32 bytes each")
    return keccak(
        encode(
            ["address", "uint32", "address", "bytes32", "bytes32"],
            [to_canonical_address(contract), round_, to_canonical_address(worker), model_digest, salt],
        )
    )


def score_commitment(contract: str, round_: int, evaluator: str, salt: bytes, packed_scores: bytes) -> bytes:
    """keccak256(abi.encode(contract, round, evaluator, salt, scores)): what an evaluator
    commits before anyone's scores are public, and the contract checks its reveal against."""
    if len(salt) != 32:
        raise ValueError("a score commitment's salt must be 32 bytes")
    return keccak(
        encode(
            ["address", "uint32", "address", "bytes32", "bytes"],
            [to_canonical_address(contract), round_, to_canonical_address(evaluator), salt, packed_scores],
        )
    )


def encode_scores(scores: Sequence[float | None]) -> bytes:
    """Packs scores in [0, 1] (None = abstain) into the calldata format."""
    out = bytearray()
    for i, s in enumerate(scores):
        if s is None:
            out += ABSTAIN.to_bytes(2, "big")
            continue
        if not (isinstance(s, (int, float)) and math.isfinite(s) and 0.0 <= s <= 1.0):
            raise ValueError(f"score {i} is {s!r}; scores must be finite numbers in [0, 1] or None")
        out += round(s * SCORE_SCALE).to_bytes(2, "big")
    return bytes(out)


def decode_scores(data: bytes) -> list[float | None]:
    """Unpacks calldata scores; abstentions and out-of-range values become None."""
    if len(data) % 2:
        raise ValueError(f"packed scores have odd length {len(data)}")
    out: list[float | None] = []
    for i in range(0, len(data), 2):
        v = int.from_bytes(data[i : i + 2], "big")
        out.append(v / SCORE_SCALE if v <= SCORE_SCALE else None)
    return out


@dataclass(frozen=True)
class Submission:
    """One ModelCommitted event, with the opening the worker sent the requester (if any)."""

    worker: str
    commitment: bytes
    digest: bytes | None = None
    salt: bytes | None = None


def reveal(
    contract: str, round_: int, submissions: Sequence[Submission], models: Sequence[bytes]
) -> tuple[list[str], list[int], list[bytes]]:
    """The (submitters, positions, openings) arguments of settleRound.

    `submissions` in event order; `models` as published. A submission whose opening
    is missing or does not match its commitment is passed as NOT_OPENED with its raw
    commitment: it stays out of the list and earns nothing.
    """
    where = {d: i for i, d in enumerate(models)}
    if len(where) != len(models):
        raise ValueError("the published model list has duplicates")
    submitters: list[str] = []
    positions: list[int] = []
    openings: list[bytes] = []
    for s in submissions:
        submitters.append(s.worker)
        if (
            s.digest is not None
            and s.salt is not None
            and s.digest in where
            and commitment(contract, round_, s.worker, s.digest, s.salt) == s.commitment
        ):
            positions.append(where[s.digest])
            openings.append(s.salt)
        else:
            positions.append(NOT_OPENED)
            openings.append(s.commitment)
    return submitters, positions, openings


OPENING_BYTES = 54
"""`OPENING_BYTES`: one submitter's record in settleRound's packed `openings`."""


def pack_openings(submitters: Sequence[str], positions: Sequence[int], openings: Sequence[bytes]) -> bytes:
    """settleRound's `openings` argument: per submitter, its address (20 bytes), its
    model's position (2 bytes, big-endian; NOT_OPENED if excluded) and its salt or raw
    commitment (32 bytes), concatenated in submission order."""
    if not len(submitters) == len(positions) == len(openings):
        raise ValueError("submitters, positions and openings differ in length")
    out = bytearray()
    for who, p, o in zip(submitters, positions, openings, strict=True):
        if len(o) != 32 or not 0 <= p <= NOT_OPENED:
            raise ValueError(f"bad opening for {who}: position {p}, {len(o)}-byte salt")
        out += to_canonical_address(who) + p.to_bytes(2, "big") + o
    return bytes(out)


def unpack_openings(data: bytes) -> tuple[list[str], list[int], list[bytes]]:
    """`pack_openings` reversed (from settleRound's calldata): submitters (checksummed),
    positions, openings."""
    if len(data) % OPENING_BYTES:
        raise ValueError(f"packed openings of {len(data)} bytes: not a multiple of {OPENING_BYTES}")
    recs = [data[i : i + OPENING_BYTES] for i in range(0, len(data), OPENING_BYTES)]
    return (
        [to_checksum_address(r[:20]) for r in recs],
        [int.from_bytes(r[20:22], "big") for r in recs],
        [bytes(r[22:]) for r in recs],
    )


def earners_in_order(earned: Mapping[str, int]) -> list[str]:
    """closeTask's `earners` argument: every worker with a positive credit, by ascending
    numeric address, as the contract checks them (strictly ascending: no repeats)."""
    return sorted((w for w, e in earned.items() if e > 0), key=lambda a: int(a, 16))


PENDING_BYTES = 53
"""`PENDING_BYTES`: one score commitment's record in revealScores' `pending`."""


@dataclass(frozen=True)
class ScoreReveal:
    """What an evaluator reveals of its committed scores: the salt and the packed row."""

    salt: bytes
    packed: bytes


def pending_score_commitments(events: Sequence[object], round_: int) -> list[tuple[str, bytes]]:
    """The score commitments of `round_` not revealed yet, in commit order, from the
    contract's events in chain order (ScoresCommitted less ScoresRevealed): the
    `pending` list revealScores checks against the contract's score accumulator."""
    commits: dict[str, bytes] = {}
    for e in events:
        name, args = getattr(e, "name", None), getattr(e, "args", {})
        if args.get("round") != round_:
            continue
        if name == "ScoresCommitted":
            commits[args["evaluator"]] = bytes(args["commitment"])
        elif name == "ScoresRevealed":
            commits.pop(args["evaluator"], None)
    return list(commits.items())


def pack_score_reveals(
    contract: str,
    round_: int,
    pending: Sequence[tuple[str, bytes]],
    reveals: Mapping[str, ScoreReveal],
) -> tuple[bytes, bytes, list[str]]:
    """revealScores' (`pending`, `rows`) arguments, and the evaluators they reveal.

    `pending`: (evaluator, commitment) in commit order (`pending_score_commitments`).
    A reveal is included only if it matches its evaluator's commitment; any other
    pending evaluator is passed with its raw commitment and stays unrevealed (it may
    still reveal itself). The requester thus never posts a batch the contract would
    refuse for one wrong row."""
    out, rows, revealed = bytearray(), bytearray(), []
    for who, c in pending:
        r = reveals.get(who)
        if r is not None and score_commitment(contract, round_, who, r.salt, r.packed) == c:
            out += to_canonical_address(who) + b"\x01" + r.salt
            rows += r.packed
            revealed.append(who)
        else:
            out += to_canonical_address(who) + b"\x00" + c
    return bytes(out), bytes(rows), revealed
