"""The names a config may use for models and datasets, and the plug-in door they share with methods.

Torch-free and at the bottom of the package: config validation, help texts and sweep planning read these
names without importing any network or dataset code (`plugins.Registry` imports what a name stands for only
when it is used). The method registry is the sparse core's own (`harness.sparse.methods.registry`), built on
the same `Registry`.
"""
