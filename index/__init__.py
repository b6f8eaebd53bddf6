"""Indexing and retrieval: ingestion, chunking, embedding, the FAISS + SQLite store, search.

Nothing here imports the ``assistant`` package.
"""
