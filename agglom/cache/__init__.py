"""The teacher-feature cache: teacher outputs written once, beside the image shards, read back by key."""
from agglom.cache.reader import CachedTeacher, CacheKeyError, StaleCacheError, open_cache
from agglom.cache.writer import write_cache

__all__ = ["CacheKeyError", "CachedTeacher", "StaleCacheError", "open_cache", "write_cache"]
