"""kiln's engine: configuration, graph, keys, store, runner, doit tasks, run record, reports.

It knows no framework and no stage by name: stages/ hands it the stage list.
"""
