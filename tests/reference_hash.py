"""mlscale's string hash written out in plain Python integers (FNV-1a 64 over UTF-8, then splitmix64's finalizer):
an independent reference the tests compare the vectorized implementation with."""

MASK = 2**64 - 1
FNV_PRIME = 0x100000001B3


def finish(h: int) -> int:
    h = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) & MASK
    return h ^ (h >> 31)


def fnv1a_splitmix(text: str) -> int:
    h = 0xCBF29CE484222325
    for byte in text.encode():
        h = ((h ^ byte) * FNV_PRIME) & MASK
    return finish(h)
