"""What a person reads: the run record (build/run.json), the summary table and report.md,
the HTML page, progress lines while stages run, and numbers in readable units."""
