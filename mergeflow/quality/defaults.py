"""Defaults the command line shows, kept apart from the statistics so that building the parser
(every ``mergeflow`` command) does not import pandas and numpy."""

DEFAULT_LEVEL = 0.95  # confidence level of the significance tests
