"""Text embeddings: the `Embedder` protocol, its adapter over the `openai` SDK's embeddings API,
and the float32 little-endian blob format of the `content.embedding` column.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

import numpy as np
import openai
from openai import AsyncOpenAI

from dialogue.providers import ProviderError
from dialogue.providers.openai import _provider_error

_BLOB = np.dtype("<f4")  # fixed byte order, so a database moved between machines still reads


class Embedder(Protocol):
    model: str  # stored with each vector: vectors of different models must never be compared

    async def embed(self, texts: list[str]) -> np.ndarray:
        """float32, shape (len(texts), d), rows L2-normalised (so a dot product is the cosine);
        raise ProviderError on failure."""
        ...


class OpenAIEmbedder:
    def __init__(self, client: AsyncOpenAI, model: str, batch_size: int = 64,
                 max_in_flight: int = 4) -> None:
        if batch_size < 1 or max_in_flight < 1:
            raise ValueError("batch_size and max_in_flight must be at least 1")
        self.client = client
        self.model = model
        self.batch_size = batch_size
        # A few requests at once make a large document quicker without tripping a provider's
        # rate limit, or taking every pooled connection from live voice sessions.
        self._in_flight = asyncio.Semaphore(max_in_flight)

    async def embed(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        batches = [texts[i:i + self.batch_size] for i in range(0, len(texts), self.batch_size)]
        tasks = [asyncio.ensure_future(self._batch(batch)) for batch in batches]
        try:
            rows = await asyncio.gather(*tasks)
        except BaseException:
            # One failed batch fails the whole document: stop paying for the others.
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        if len({r.shape[1] for r in rows}) != 1:
            raise ProviderError("provider_error",
                                "embedding provider changed dimensions mid-document")
        return normalise(np.concatenate(rows))

    async def _batch(self, texts: list[str]) -> np.ndarray:
        async with self._in_flight:
            try:
                response = await self.client.embeddings.create(model=self.model, input=texts)
            except openai.OpenAIError as exc:
                raise _provider_error(exc, "embedding") from exc
        data = sorted(response.data, key=lambda d: d.index)  # the API does not promise order
        if len(data) != len(texts):
            raise ProviderError("provider_error", f"embedding provider returned {len(data)} "
                                f"vectors for {len(texts)} texts")
        return np.asarray([d.embedding for d in data], dtype=np.float32)


def normalise(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (a zero row stays zero). OpenAI's vectors already are; other
    compatible servers' may not be."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.where(norms == 0, 1, norms)


def to_blob(vector: np.ndarray) -> bytes:
    return np.asarray(vector, dtype=_BLOB).tobytes()


def from_blob(blob: bytes) -> np.ndarray:
    """A read-only float32 view of the bytes (no copy: retrieval reads many of these)."""
    return np.frombuffer(blob, dtype=_BLOB)
