"""Frames <-> messages: orjson header + raw numpy buffers, zero-copy, bounded, signed."""
