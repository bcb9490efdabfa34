"""Data: the datasets (`datasets`, named in the torch-free `registry`, plug-ins included) and the loaders
with exact mid-epoch resume (`loaders`)."""
