"""The nostr-sdk adapter against an in-process LocalRelay (never a public relay)."""

from __future__ import annotations

import stat
import time
from collections.abc import AsyncIterator
from pathlib import Path

import nostr_sdk
import pytest

from mesh_llm.discovery import (
    MeshListing,
    NostrDirectory,
    load_or_create_nostr_keys,
    newest_per_publisher,
)

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def relay_url() -> AsyncIterator[str]:
    relay = nostr_sdk.LocalRelayBuilder().addr("127.0.0.1").build()
    await relay.run()
    url = str(await relay.url())
    yield url
    relay.shutdown()


def test_nostr_key_is_kept_with_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "nostr.nsec"
    keys = load_or_create_nostr_keys(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text().startswith("nsec1")
    again = load_or_create_nostr_keys(path)
    assert again.public_key().to_hex() == keys.public_key().to_hex()


async def test_publish_discover_replace_and_delete(relay_url: str, tmp_path: Path) -> None:
    keys = load_or_create_nostr_keys(tmp_path / "nostr.nsec")
    publisher = NostrDirectory([relay_url], keys)
    other = NostrDirectory([relay_url], nostr_sdk.Keys.generate())
    reader = NostrDirectory([relay_url])
    try:
        await publisher.publish(MeshListing("tok-1", serving=("m",), node_count=1))
        await publisher.publish(MeshListing("tok-2", serving=("m",), node_count=2, name="lab"))
        await other.publish(MeshListing("tok-other", node_count=1))
        found = newest_per_publisher(await reader.discover(timeout_s=3), time.time())
        tokens = {m.listing.invite_token for m in found}
        assert tokens == {"tok-2", "tok-other"}
        mine = next(m for m in found if m.listing.invite_token == "tok-2")
        assert mine.listing.name == "lab"
        assert mine.publisher_npub == keys.public_key().to_bech32()
        assert mine.expires_at is not None
        assert 110 <= mine.expires_at - mine.published_at <= 130

        await publisher.unpublish()
        left = newest_per_publisher(await reader.discover(timeout_s=3), time.time())
        assert [m.listing.invite_token for m in left] == ["tok-other"]
    finally:
        for directory in (publisher, other, reader):
            await directory.close()
