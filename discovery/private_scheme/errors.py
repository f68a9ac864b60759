"""Errors of the private-mode wire scheme. Messages never hold an input, an output or a user id."""

from __future__ import annotations


class SchemeError(ValueError):
    """A private-mode structure or response is malformed, or does not fit the scheme."""


class ProofError(SchemeError):
    """The server's batch DLEQ proof does not verify against the pinned public key.

    The evaluations must be discarded: they may come from another key (a key that tags this client).
    """
