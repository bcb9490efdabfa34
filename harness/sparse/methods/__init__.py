"""The method zoo (SPEC section 6): the shared base (`base`), one module per method or tight family, and
the registry of their names (`registry`).

Each method's class holds its settings next to its scores and its paper; `base` shows how to use a method
in any training loop and docs/methods.md how to add one. This file imports nothing, so that importing one
method module for its settings (the config does, without torch) imports only that module; the public
names are `harness.sparse`'s.
"""
