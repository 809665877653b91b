"""Bundle tools of the build side: the store, packing, cold-start timing and the
``python -m pipeline.bundle`` command. The format, loading and checking live in
:mod:`pipeline.runtime`."""
