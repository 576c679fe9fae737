"""Catalogs of files that administrators drop into shared folders.

``sif`` reads Apptainer images, ``indexer`` keeps a database index equal to a
folder (shared by every catalog kind), ``watcher`` tells the indexer what
changed, ``images`` is the image catalog. No module here imports falcon.
"""
