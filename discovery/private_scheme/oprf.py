"""The OPRF suite of private mode: RFC 9497, ristretto255-SHA512, VOPRF mode (mode byte 0x01).

Wire shapes (all fixed-size, packed without separators):
- a blinded element, an evaluated element and a public key are 32-byte ristretto255 encodings;
- a batch proof is 64 bytes, ``c || s`` (two little-endian scalars, RFC 9497 section 2.2.1);
- an OPRF output ``y`` is 64 bytes (SHA-512, RFC 9497 ``Finalize``).

The client side (blind, verify the batch proof, unblind) lives here so that the SDK and the server share one
definition; the server's evaluation is in ``discovery.core.private``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from voprf import ristretto

from discovery.private_scheme.errors import ProofError, SchemeError

SUITE = "ristretto255-SHA512"
MODE_VOPRF = 0x01
ELEMENT_SIZE = 32
PROOF_SIZE = 64
OUTPUT_SIZE = 64
PUBLIC_KEY_SIZE = 32


def parse_public_key(raw: bytes) -> ristretto.PublicKey:
    """The pinned public key, checked as a valid, non-identity ristretto255 encoding."""
    if len(raw) != PUBLIC_KEY_SIZE:
        raise SchemeError(f"a public key is {PUBLIC_KEY_SIZE} bytes")
    try:
        return ristretto.PublicKey.deserialize(bytes(raw))
    except ValueError as exc:
        raise SchemeError("the public key is not a valid ristretto255 element") from exc


def pack(items: Sequence[bytes]) -> bytes:
    return b"".join(items)


def unpack(packed: bytes, size: int) -> list[bytes]:
    if len(packed) % size:
        raise SchemeError(f"length {len(packed)} is not a multiple of {size}")
    return [bytes(packed[i : i + size]) for i in range(0, len(packed), size)]


@dataclass(frozen=True, slots=True)
class BlindBatch:
    """The client's secret state for one batch (the blinds), and the packed blinded elements to send."""

    clients: tuple[ristretto.Client, ...]
    blinded: bytes  # n x 32 bytes

    def __len__(self) -> int:
        return len(self.clients)


def blind_batch(inputs: Sequence[bytes]) -> BlindBatch:
    """Blind each input (``h``, the 32-byte contact hash) with a fresh random scalar."""
    clients: list[ristretto.Client] = []
    blinded: list[bytes] = []
    for item in inputs:
        if not item:
            raise SchemeError("an OPRF input is empty")
        client, element = ristretto.Client.blind(bytes(item))
        clients.append(client)
        blinded.append(element.serialize())
    return BlindBatch(tuple(clients), pack(blinded))


def finalize_batch(batch: BlindBatch, evaluated: bytes, proof: bytes, public_key: bytes) -> list[bytes]:
    """Verify the batch DLEQ proof against the pinned key, then unblind: the 64-byte outputs ``y``, in order.

    Raises ProofError when the proof does not verify (wrong key, altered element or proof): no output is
    returned at all in that case, so a forged evaluation can never become a match.
    """
    key = parse_public_key(public_key)
    if len(proof) != PROOF_SIZE:
        raise SchemeError(f"a batch proof is {PROOF_SIZE} bytes")
    if len(evaluated) != len(batch) * ELEMENT_SIZE:
        raise SchemeError(f"expected {len(batch)} evaluated elements of {ELEMENT_SIZE} bytes")
    if not len(batch):
        return []
    try:
        output = ristretto.VerifiableBatchOutput.deserialize(bytes(proof) + bytes(evaluated))
    except ValueError as exc:
        raise ProofError("the evaluated elements or the proof are not valid encodings") from exc
    try:
        return list(ristretto.Client.finalize_batch(list(batch.clients), output, key))
    except ValueError as exc:
        raise ProofError("the batch proof does not verify against the pinned public key") from exc
    except BaseException as exc:
        # voprf 0.2 unwraps the batch verification result: a bad batch proof panics in Rust, which pyo3
        # raises as pyo3_runtime.PanicException (a BaseException that cannot be imported by name).
        if type(exc).__name__ == "PanicException":
            raise ProofError("the batch proof does not verify against the pinned public key") from None
        raise
