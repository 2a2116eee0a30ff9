"""Every subcommand explains itself: a description, and help on each argument."""

import argparse

from mergeflow.cli import build_parser

WORKFLOW_ONLY = {"gate", "select", "report", "digest", "locate", "promote", "upload"}


def subcommands():
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {choice.dest: choice.help for choice in action._choices_actions}
    return {name: (sub, helps[name]) for name, sub in action.choices.items()}


def test_every_subcommand_has_a_description_and_help_per_argument():
    for name, (sub, summary) in subcommands().items():
        assert sub.description, name
        assert summary and not summary.endswith("."), name
        missing = [a.dest for a in sub._actions if a.dest != "help" and not a.help]
        assert missing == [], name


def test_workflow_only_commands_say_so():
    for name, (sub, summary) in subcommands().items():
        marked = summary.endswith("(workflow)") and "Run by the workflow" in sub.description
        assert marked == (name in WORKFLOW_ONLY), name
