"""kiln's engine: it plans, caches, runs and reports stages it knows only through their
contract (pipeline.stage); stages/ hands it the stage list. It names no stage and no framework.

Packages, each importing only from those above it in this list:

    stage, names   the contract with stages/ and the syntax of task names
    cache/         content addressing: digests, keys, the store and its remote backend
    plan/          command line and targets.yaml -> the stage graph -> doit task specs
    run/           one stage node: restore or run (here or on Dask), up to date or not
    report/        the run record, summary table, HTML page, progress
    driver/        doit's side: session, actions, reporter, `doit explain`, Dask worker
"""
