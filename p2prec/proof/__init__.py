"""Proof of p2prec's guarantees: the reliability suite's record, checker and rogue peer."""
