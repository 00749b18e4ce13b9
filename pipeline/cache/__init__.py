"""Content addressing and its backends: digests and stage keys, files written whole, the
local store (cache/: action cache and blobs) with the remote Bazel-HTTP cache behind it, and
the tools' remembered answers (versions, devices) that keys depend on."""
