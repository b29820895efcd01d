"""Data side of the pipeline: shards, collection, ingest, encoding and the training window stream.

Modules that launch work (collect, encode, ingest) import Ray inside their functions; `schema` and `shards`
need only pyarrow and numpy.
"""
