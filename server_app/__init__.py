"""Pollen's server app: validates the run, drives the rounds, writes the outputs."""
