"""Seeds derived from what a draw is for, not from the order draws happen in."""
from __future__ import annotations

import hashlib

def derive_seed(*parts) -> int:
    """A stable 63-bit seed from (run seed, iteration, purpose, ...): every random draw of an iteration depends
    only on these, so a resumed run replays exactly what an uninterrupted one would have drawn."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little") >> 1
