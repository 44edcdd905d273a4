"""Datasets read from this machine: text corpora (the Python standard library's own source by default)."""

from .corpus import CharVocab, DataError, read_text, split_documents, stdlib_corpus, stdlib_documents

__all__ = ["CharVocab", "DataError", "read_text", "split_documents", "stdlib_corpus", "stdlib_documents"]
