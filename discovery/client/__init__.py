"""Client SDK for the discovery service.

Quick start::

    from discovery.client import DiscoveryClient, AdminClient

    with AdminClient("127.0.0.1:50051", default_region="DE") as admin:
        admin.register_user("alice", "+49 151 23456789")

    with DiscoveryClient("127.0.0.1:50051", user_id="bob", default_region="DE") as client:
        result = client.discover(["0151 23456789", "not a number"])
        result.matches   # [Match(entry="0151 23456789", e164="+4915123456789", user_id="alice")]
        result.invalid   # [InvalidEntry(entry="not a number", reason="not a phone number")]

Modules:

* :mod:`~discovery.client.normalize`: ``normalize_number(raw, default_region) -> str`` (E.164),
  ``InvalidNumberError``, ``InvalidReason``.
* :mod:`~discovery.client.address_book`: ``prepare_address_book(...)`` (normalise, dedupe, hash, chunk).
* :mod:`~discovery.client.models`: ``Match``, ``InvalidEntry``, ``DiscoverResult``, ``Settings``,
  ``ImportSummary``, ``ImportRejection``.
* :mod:`~discovery.client.sync_client`: ``DiscoveryClient``, ``AdminClient``.
* :mod:`~discovery.client.async_client`: ``AsyncDiscoveryClient``, ``AsyncAdminClient``.
* :mod:`~discovery.client.credentials`: channel creation and call metadata.
* :mod:`~discovery.client.errors`: ``DiscoveryError``.
* :mod:`~discovery.client.resync`: ``DiscoverState`` (previous sets and tokens: free re-syncs).
* :mod:`~discovery.client.joins`: ``JoinEvent``, ``JoinSubscription`` (from
  ``AsyncDiscoveryClient.subscribe_joins``), ``ContactMatcher``.
* :mod:`~discovery.client.contacts_file`: ``parse_contacts``, ``parse_import_rows`` (CSV / line files).

The SDK never logs or prints phone numbers or hashes.
"""

from discovery.client.address_book import (
    DEFAULT_MAX_PER_REQUEST,
    PreparedAddressBook,
    pack_chunks,
    prepare_address_book,
)
from discovery.client.async_client import AsyncAdminClient, AsyncDiscoveryClient
from discovery.client.contacts_file import parse_contacts, parse_import_rows
from discovery.client.credentials import (
    USER_ID_METADATA_KEY,
    call_metadata,
    create_aio_channel,
    create_channel,
)
from discovery.client.errors import DiscoveryError
from discovery.client.joins import ContactMatcher, JoinEvent, JoinSubscription
from discovery.client.models import (
    CLIENT_INVALID_NUMBER,
    DiscoverResult,
    ImportRejection,
    ImportSummary,
    InvalidEntry,
    Match,
    Settings,
)
from discovery.client.normalize import InvalidNumberError, InvalidReason, check_region, normalize_number
from discovery.client.resync import DiscoverState
from discovery.client.sync_client import DEFAULT_IMPORT_BATCH_SIZE, AdminClient, DiscoveryClient

__all__ = [
    "CLIENT_INVALID_NUMBER",
    "DEFAULT_IMPORT_BATCH_SIZE",
    "DEFAULT_MAX_PER_REQUEST",
    "USER_ID_METADATA_KEY",
    "AdminClient",
    "AsyncAdminClient",
    "AsyncDiscoveryClient",
    "ContactMatcher",
    "DiscoverResult",
    "DiscoverState",
    "DiscoveryClient",
    "DiscoveryError",
    "ImportRejection",
    "ImportSummary",
    "InvalidEntry",
    "InvalidNumberError",
    "InvalidReason",
    "JoinEvent",
    "JoinSubscription",
    "Match",
    "PreparedAddressBook",
    "Settings",
    "call_metadata",
    "check_region",
    "create_aio_channel",
    "create_channel",
    "normalize_number",
    "pack_chunks",
    "parse_contacts",
    "parse_import_rows",
    "prepare_address_book",
]
