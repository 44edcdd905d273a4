"""Datasets read from this machine: text corpora (the Python standard library's own source by default)."""

from .corpus import CharVocab, read_text, stdlib_corpus

__all__ = ["CharVocab", "read_text", "stdlib_corpus"]
