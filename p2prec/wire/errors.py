"""The one error type for bad input from a peer."""

from __future__ import annotations


class RemoteProtocolError(Exception):
    """A peer sent frames that do not form a valid, authentic message.

    Raised by ``codec.decode`` (and nothing else is raised by it) for:

    - a failed signature check, a missing or malformed signature, or a signed message type
      arriving where no verifier was given;
    - truncated frames, too few or too many frames, oversized frames, header or message;
    - a header that is not a JSON object, or fields that are missing or of the wrong type
      (``true`` where an int is expected, floats, strings, out-of-range integers);
    - an unknown protocol version or message type;
    - buffer dtypes or shapes not allowed for their field, byte lengths that do not match the
      shape, inconsistent lengths between related fields;
    - invalid content: shards not strictly increasing, a version not above its base, negative
      packed versions, empty, over-long or duplicate names, vectors or lists over the limits.

    Drivers count, log and survive it; it never means the local node is broken.
    """
