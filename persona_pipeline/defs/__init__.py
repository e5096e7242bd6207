"""Everything Dagster: assets, checks, automation, resources, IO manager, executors, run planning.

The science lives in the plain-Python modules one level up; nothing outside this
package imports ``dagster`` (``test_layout.py`` enforces it).
"""
