"""Seeds: image i of a run uses seed + i; -1 (or None) draws a random seed, as in A1111.

torch.Generator.manual_seed takes integers in [-2^63, 2^64); leakstyle's seeds are 0 .. 2^64 - 1.
"""

from __future__ import annotations

import numbers
import secrets

from .errors import LeakstyleError

SEED_MAX = 2**64 - 1
RANDOM = -1
SAMPLER_OFFSET = 1_000_003  # the sampler's own noise (ancestral schedulers) comes from seed + this offset


def random_seed() -> int:
    """A fresh seed below 2^32, the range A1111 draws from (easy to read back and type)."""
    return secrets.randbelow(2**32)


def resolve_seed(seed: int | None, count: int = 1) -> int:
    """The first seed of `count` images: `seed` itself, or a random one for None or -1.

    Other negative seeds, and seeds whose last image (seed + count - 1) passes 2^64 - 1, are a LeakstyleError."""
    if seed is None:
        return random_seed()
    if not isinstance(seed, numbers.Integral) or isinstance(seed, bool):
        raise LeakstyleError(f"the seed must be a whole number from 0 to {SEED_MAX} (or -1 for a random one), got {seed!r}")
    seed = int(seed)
    if seed == RANDOM:
        return random_seed()
    if seed < 0:
        raise LeakstyleError(f"seed {seed} is negative; give 0 to {SEED_MAX}, or -1 for a random seed")
    last = seed + count - 1
    if last > SEED_MAX:
        raise LeakstyleError(f"seed {seed} with {count} images needs seeds up to {last}, past {SEED_MAX}; "
                             f"give a seed of at most {SEED_MAX - count + 1}")
    return seed


def sampler_seed(seed: int) -> int:
    """The seed of the sampler's own generator for the image of seed `seed`: seed + 1,000,003 modulo 2^64, so that
    it never overflows and ordinary seeds keep the value recorded images were made with."""
    return (seed + SAMPLER_OFFSET) % 2**64
