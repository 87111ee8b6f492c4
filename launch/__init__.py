"""The ``torchrt`` command line: run a YAML job, run a coordinator, inspect and check.

``launch`` uses the ``torchrt`` library; the library never imports ``launch``.
"""
