"""The private-mode wire scheme, shared by the SDK and the server (imports nothing else of discovery).

RFC 9497 VOPRF over ristretto255-SHA512 (`oprf`), what is derived from an output ``y`` (`derive`),
the snapshot and its deltas (`tagset`) and the padded buckets (`bucket`).
The scheme is specified in docs/private-mode.md.
"""

from discovery.private_scheme.bucket import Bucket, BucketLayout, bucket_layout, bucket_size, prefix_problem
from discovery.private_scheme.derive import (
    DEFAULT_ID_PAD,
    TAG_SIZE,
    bucket_prefix,
    open_sealed,
    seal_user_id,
    sealed_size,
    tag_of,
)
from discovery.private_scheme.errors import BucketOverflow, ProofError, SchemeError
from discovery.private_scheme.oprf import (
    ELEMENT_SIZE,
    OUTPUT_SIZE,
    PROOF_SIZE,
    SUITE,
    BlindBatch,
    blind_batch,
    finalize_batch,
    parse_public_key,
)
from discovery.private_scheme.tagset import Delta, DeltaRecord, Snapshot, apply_delta

SMALL_DIRECTORY_MAX = 16_384  # up to this many registered users, the snapshot carries the sealed ids

__all__ = [
    "DEFAULT_ID_PAD",
    "ELEMENT_SIZE",
    "OUTPUT_SIZE",
    "PROOF_SIZE",
    "SMALL_DIRECTORY_MAX",
    "SUITE",
    "TAG_SIZE",
    "BlindBatch",
    "Bucket",
    "BucketLayout",
    "BucketOverflow",
    "Delta",
    "DeltaRecord",
    "ProofError",
    "SchemeError",
    "Snapshot",
    "apply_delta",
    "blind_batch",
    "bucket_layout",
    "bucket_prefix",
    "bucket_size",
    "finalize_batch",
    "open_sealed",
    "parse_public_key",
    "prefix_problem",
    "seal_user_id",
    "sealed_size",
    "tag_of",
]
