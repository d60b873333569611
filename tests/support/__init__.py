"""Helpers shared by the test modules and the bench scripts (never test modules themselves).

``tests/conftest.py`` puts this folder on ``sys.path``, so the modules are imported by their own names
(``from nets import Builder``); the bench scripts do the same. Test modules never import each other: what
two of them share lives here or in a ``conftest.py`` fixture.
"""
