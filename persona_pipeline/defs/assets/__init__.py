"""Thin Dagster wrappers around the core modules, one file per asset group."""
