"""doit's side: the session dodo.py builds (task list, DOIT_CONFIG, actions, up-to-date
check), the reporter, the `doit explain` command, .doit.db repair, the Dask worker's entry."""
