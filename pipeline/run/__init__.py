"""Running one stage node, here or on a Dask worker: restore-or-run behind its key, the
up-to-date check doit asks, whether build/ still holds what was written, and the machine
lock that keeps timings alone."""
