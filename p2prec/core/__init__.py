"""Pure protocol logic: no I/O, no clock, no global randomness (DESIGN.md section 3)."""
