"""Samples and shards: decoding, transforms, groups, readers, and the writers behind `agglom data`.

Import submodules directly (``agglom.data.readers``, ``agglom.data.groups``...); this package imports nothing
heavy on its own.
"""
