"""The language: spec text -> typed.Network (source, grammar, syntax tree, parse, check, weights)."""
