"""Running one stage node, here or on a Dask worker: what happens to it (decide: restore, run,
skip or fail, asked by `doit explain` too), doing it, its typed record entry, the up-to-date
check doit asks, whether build/ still holds what was written, and the machine lock."""
