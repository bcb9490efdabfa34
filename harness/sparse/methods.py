"""Placeholder registry; replaced by the real method zoo."""

METHODS = {"dense": None, "static": None, "gmp": None, "gmp-layerwise": None, "granet": None, "rigl": None, "set": None}
