"""Experiment tools built on the library: ``cmkd-quickstart``, ``cmkd-compare`` and ``cmkd-sweep``.

Nothing in the library imports from here; these modules may use the data modules of ``datamodules``.
"""
