"""Example models. Each file names its framework in FRAMEWORK and defines build(), which
returns the model and its example inputs (what 'the model' is per framework: the adapter's
docstring in stages/frameworks/). kiln seeds torch before build(); the others seed their own
weights and inputs."""
