"""Proof of p2prec's guarantees: the reliability suite's record, checker and rogue peer.

``record`` reads the trainer's journal of published messages, ``observe`` samples what every
member reports while a fault schedule runs, ``checker`` verifies the invariants of DESIGN.md
section 2 from those two (pure: data in, violations out), ``report`` sums a scenario up and
``scenario`` drives one on a real local mesh.
"""
