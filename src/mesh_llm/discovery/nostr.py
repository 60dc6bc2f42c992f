"""The Nostr adapter (nostr-sdk): publish, delete and fetch kind-31990 mesh listings.

The only module that touches ``nostr_sdk``. Foreign errors become ``DiscoveryError``. Every call
has a bound: a relay that never answers costs at most its timeout.
"""

from __future__ import annotations

import datetime
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path

import nostr_sdk as nostr

from mesh_llm.discovery.listing import DiscoveredMesh, DiscoveryError, MeshListing

__all__ = [
    "DEFAULT_NOSTR_RELAYS",
    "FETCH_TIMEOUT_S",
    "LISTING_KIND",
    "LISTING_TTL_S",
    "NostrDirectory",
    "load_or_create_nostr_keys",
]

logger = logging.getLogger(__name__)

DEFAULT_NOSTR_RELAYS = (
    "wss://relay.damus.io",
    "wss://nos.lol",
    "wss://relay.nostr.band",
    "wss://nostr.land",
    "wss://nostr.wine",
)
LISTING_KIND = 31990
LISTING_TAG = "mesh-llm"
LISTING_TTL_S = 120
FETCH_TIMEOUT_S = 5.0
FETCH_LIMIT = 100
CONNECT_TIMEOUT_S = 3.0


def load_or_create_nostr_keys(path: Path) -> nostr.Keys:
    """The node's Nostr identity, kept in ``path`` (bech32 ``nsec``, mode 0600)."""
    try:
        return nostr.Keys.parse(path.read_text().strip())
    except FileNotFoundError:
        pass
    except Exception as exc:
        raise DiscoveryError(f"{path}: not a Nostr secret key ({exc})") from exc
    keys = nostr.Keys.generate()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(keys.secret_key().to_bech32() + "\n")
    return keys


def _tag_value(event: nostr.Event, name: str) -> str | None:
    for tag in event.tags():
        values = tag.to_vec()
        if len(values) >= 2 and values[0] == name:
            return str(values[1])
    return None


class NostrDirectory:
    """A connection to some relays, for publishing (with ``keys``) and discovering."""

    def __init__(self, relays: Sequence[str], keys: nostr.Keys | None = None) -> None:
        self._relays = tuple(relays) or DEFAULT_NOSTR_RELAYS
        self._keys = keys
        self._client: nostr.Client | None = None
        self._last_created_at = 0
        self._published: list[str] = []
        """Ids of the events this node published (for the NIP-09 deletion)."""

    @property
    def relays(self) -> tuple[str, ...]:
        return self._relays

    async def _connected(self) -> nostr.Client:
        if self._client is not None:
            return self._client
        client = nostr.Client()
        try:
            for url in self._relays:
                await client.add_relay(nostr.RelayUrl.parse(url))
            await client.connect(datetime.timedelta(seconds=CONNECT_TIMEOUT_S))
        except Exception as exc:
            raise DiscoveryError(f"cannot use Nostr relays {list(self._relays)}: {exc}") from exc
        self._client = client
        return client

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                await client.shutdown()
            except Exception as exc:  # noqa: BLE001 - closing: nothing else to do
                logger.debug("nostr client shutdown failed: %s", exc)

    async def publish(self, listing: MeshListing, ttl_s: int = LISTING_TTL_S) -> None:
        """Publish (replace) this node's listing, expiring ``ttl_s`` from now."""
        keys = self._require_keys()
        client = await self._connected()
        # Relays keep one replaceable event per second: a newer listing needs a newer second.
        created_at = max(int(time.time()), self._last_created_at + 1)
        self._last_created_at = created_at
        expiration = nostr.Timestamp.from_secs(created_at + ttl_s)
        tags = [
            nostr.Tag.parse(["d", LISTING_TAG]),
            nostr.Tag.parse(["k", LISTING_TAG]),
            nostr.Tag.expiration(expiration),
        ]
        event = (
            nostr.EventBuilder(nostr.Kind(LISTING_KIND), listing.to_json())
            .tags(tags)
            .custom_created_at(nostr.Timestamp.from_secs(created_at))
        )
        signed = event.finalize(keys)
        await self._send(client, signed)
        self._published.append(signed.id().to_hex())
        del self._published[:-16]

    async def unpublish(self) -> None:
        """NIP-09: ask the relays to delete this node's listings."""
        if self._keys is None or not self._published:
            return
        client = await self._connected()
        pubkey = self._keys.public_key().to_hex()
        tags = [nostr.Tag.parse(["e", event_id]) for event_id in self._published]
        tags += [
            nostr.Tag.parse(["a", f"{LISTING_KIND}:{pubkey}:{LISTING_TAG}"]),
            nostr.Tag.parse(["k", str(LISTING_KIND)]),
        ]
        # Not older than the listing it deletes (NIP-09 "a" deletes versions up to its own time).
        created_at = max(int(time.time()), self._last_created_at)
        deletion = (
            nostr.EventBuilder(nostr.Kind(5), "mesh closed")
            .tags(tags)
            .custom_created_at(nostr.Timestamp.from_secs(created_at))
            .finalize(self._keys)
        )
        await self._send(client, deletion)
        self._published.clear()

    async def discover(self, timeout_s: float = FETCH_TIMEOUT_S) -> list[DiscoveredMesh]:
        """Every readable mesh listing the relays hold (all publishers, not yet filtered)."""
        client = await self._connected()
        query = (
            nostr.Filter()
            .kind(nostr.Kind(LISTING_KIND))
            .custom_tag(nostr.SingleLetterTag.from_byte(ord("k")), LISTING_TAG)
            .limit(FETCH_LIMIT)
        )
        try:
            events = await client.fetch_events(
                nostr.ReqTarget.auto([query]), datetime.timedelta(seconds=timeout_s)
            )
        except Exception as exc:
            raise DiscoveryError(f"Nostr query failed: {exc}") from exc
        found = []
        for event in events:
            try:
                listing = MeshListing.from_json(event.content())
            except DiscoveryError as exc:
                logger.debug("skipping an unreadable listing: %s", exc)
                continue
            expiration = _tag_value(event, "expiration")
            found.append(
                DiscoveredMesh(
                    listing=listing,
                    publisher_npub=event.author().to_bech32(),
                    published_at=event.created_at().as_secs(),
                    expires_at=int(expiration) if expiration and expiration.isdigit() else None,
                )
            )
        return found

    def _require_keys(self) -> nostr.Keys:
        if self._keys is None:
            raise DiscoveryError("publishing needs a Nostr key")
        return self._keys

    async def _send(self, client: nostr.Client, event: nostr.Event) -> None:
        try:
            output = await client.send_event(event)
        except Exception as exc:
            raise DiscoveryError(f"Nostr publish failed: {exc}") from exc
        if not output.success:
            raise DiscoveryError(f"no relay accepted the event: {output.failed}")
