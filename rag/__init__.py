"""Course knowledge (RAG): ingestion (extract → chunk → embed → store, one `content` row per
chunk), retrieval (full-text and vector search fused with reciprocal rank fusion), and the
student's memory of their own earlier turns.
"""
