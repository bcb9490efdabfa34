"""Sparse CPU inference: export of a trained network, its runtime and its benchmark."""
