"""Deduplication of embeddings for one sidecar's lifetime: a bounded LRU cache keyed by content hash.

Key: blake2b-128 of the model's protocol name, a NUL, and the sequence; value: its float32 vector.
Bounded by bytes (vectors plus a per-entry overhead estimate) and optionally by entries; the least
recently used entries go first. Counts hits, misses and evictions for `status`. Not thread-safe by
itself: the compute thread alone touches it; `stats` reads plain integers.
"""

import collections
import hashlib

ENTRY_OVERHEAD = 160  # bytes per entry beyond the vector: key, dict slot, array header (an estimate)


def content_key(model, seq):
    h = hashlib.blake2b(digest_size=16)
    h.update(model.encode())
    h.update(b"\0")
    h.update(seq.encode("utf-8", "surrogatepass"))  # total: no text can fail its batch here
    return h.digest()


class EmbeddingCache:
    def __init__(self, max_bytes=1 << 30, max_entries=None):
        self.max_bytes = int(max_bytes)
        self.max_entries = max_entries
        self._data = collections.OrderedDict()
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    @property
    def enabled(self):
        return self.max_bytes > 0 and (self.max_entries is None or self.max_entries > 0)

    def get(self, key):
        vector = self._data.get(key)
        if vector is None:
            self.misses += 1
            return None
        self._data.move_to_end(key)
        self.hits += 1
        return vector

    def peek(self, key):
        """The cached vector or None, without counting a hit or miss or refreshing its place."""
        return self._data.get(key)

    def put(self, key, vector):
        if not self.enabled or key in self._data:
            return
        vector = vector.copy()
        size = vector.nbytes + ENTRY_OVERHEAD
        if size > self.max_bytes:
            return
        self._data[key] = vector
        self.bytes += size
        while self.bytes > self.max_bytes or (self.max_entries is not None and len(self._data) > self.max_entries):
            _, old = self._data.popitem(last=False)
            self.bytes -= old.nbytes + ENTRY_OVERHEAD
            self.evictions += 1

    def __len__(self):
        return len(self._data)

    def stats(self):
        return {"entries": len(self._data), "bytes": self.bytes, "max_bytes": self.max_bytes,
                "max_entries": self.max_entries, "hits": self.hits, "misses": self.misses,
                "evictions": self.evictions}
