"""The primary trainer: a torch two-tower model trained online on a click stream, whose
touched rows are published as signed, versioned deltas, validated on held-out samples and
rolled back when a bad update gets through (``runtime.py`` composes the pieces)."""
