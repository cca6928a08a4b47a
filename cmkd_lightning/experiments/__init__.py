"""Experiment tools built on the library: ``cmkd-quickstart``, ``cmkd-compare`` and ``cmkd-sweep``.

``methods`` holds the one table of built-in method names, ``training`` the one trainer and evaluation of the
digits tools, ``outputs`` their statistics, tables, plot and files. Nothing in the library imports from here;
these modules may use the data modules of ``datamodules``.
"""
