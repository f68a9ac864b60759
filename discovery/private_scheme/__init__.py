"""The private-mode wire scheme, shared by the SDK and the server (imports nothing else of discovery).

RFC 9497 VOPRF over ristretto255-SHA512 (`oprf`), what is derived from an output ``y`` (`derive`),
the snapshot and its deltas (`tagset`) and the padded range buckets (`bucket`).
The scheme is specified in docs/private-mode.md.
"""

from discovery.private_scheme.bucket import (
    DEFAULT_BUCKET_USERS,
    RANGE_SIZE,
    SLACK,
    Bucket,
    bucket_capacity,
    bucket_count,
    bucket_of_rank,
    bucket_ranks,
    bucket_size,
    min_users,
    range_problem,
)
from discovery.private_scheme.derive import (
    DEFAULT_ID_PAD,
    TAG_SIZE,
    open_any,
    open_sealed,
    seal_user_id,
    sealed_size,
    tag_of,
)
from discovery.private_scheme.errors import ProofError, SchemeError
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
    "DEFAULT_BUCKET_USERS",
    "DEFAULT_ID_PAD",
    "ELEMENT_SIZE",
    "OUTPUT_SIZE",
    "PROOF_SIZE",
    "RANGE_SIZE",
    "SLACK",
    "SMALL_DIRECTORY_MAX",
    "SUITE",
    "TAG_SIZE",
    "BlindBatch",
    "Bucket",
    "Delta",
    "DeltaRecord",
    "ProofError",
    "SchemeError",
    "Snapshot",
    "apply_delta",
    "blind_batch",
    "bucket_capacity",
    "bucket_count",
    "bucket_of_rank",
    "bucket_ranks",
    "bucket_size",
    "finalize_batch",
    "min_users",
    "open_any",
    "open_sealed",
    "parse_public_key",
    "range_problem",
    "seal_user_id",
    "sealed_size",
    "tag_of",
]
