"""One SDK client (one connection pool) per provider endpoint: the embedder shares the voice
providers' client when it talks to the same server with the same key, and has its own otherwise.
"""

from __future__ import annotations

from contextlib import AsyncExitStack

from server.app import build_providers, embedder_for
from tests.conftest import make_settings


class Endpoint:  # what make_settings reads of a fake provider
    base_url = "http://127.0.0.1:9/v1"


async def test_the_embedder_shares_the_client_of_the_same_endpoint() -> None:
    settings = make_settings(Endpoint())  # type: ignore[arg-type]
    providers, clients = build_providers(settings)
    async with AsyncExitStack() as stack:
        for client in clients:
            stack.push_async_callback(client.close)
        embedder = embedder_for(settings, stack, clients)
        assert embedder is not None and embedder.client is clients[0]
        assert providers.transcriber is not None
        assert providers.transcriber.client is clients[0]  # type: ignore[attr-defined]
        alone = embedder_for(settings, stack)  # no clients given (`tutor ingest`): its own
        assert alone is not None and alone.client not in clients
        other = make_settings(Endpoint(), embedding_base_url="http://127.0.0.1:10/v1")  # type: ignore[arg-type]
        elsewhere = embedder_for(other, stack, clients)
        assert elsewhere is not None and elsewhere.client not in clients
        assert str(elsewhere.client.base_url).startswith("http://127.0.0.1:10/v1")
