"""Example models. Each file names its framework in FRAMEWORK and defines build(), which
returns the model and its example inputs; weights come from the seed kiln sets first."""
