"""From the command line to doit's task list: options, targets.yaml, the models, the stage
graph of the selected models x targets, where each node's files go, the task specs, and the
plan memo that makes a no-op run skip all of this."""
