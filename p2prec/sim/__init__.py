"""Deterministic simulation: seeded delta streams, simulated network and cluster, checkers."""
