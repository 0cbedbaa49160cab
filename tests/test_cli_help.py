"""`sslam --help` and every subcommand's help are written for users: the top page says what the tool is for
and where to start, and every option with a default shows it."""
import argparse
import importlib

import pytest

from sslam.cli import COMMANDS, build_parser


def parsers():
    for name, module in COMMANDS.items():
        parser = argparse.ArgumentParser(prog=f"sslam {name}")
        importlib.import_module(module).add_arguments(parser, name)
        yield name, parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub, subparser in action.choices.items():
                    yield f"{name} {sub}", subparser


def test_every_default_is_shown():
    hidden = []
    for name, parser in parsers():
        help_text = parser.format_help()  # renders %(default)s, and fails on a malformed help string
        for action in parser._actions:
            if not action.option_strings or action.required or isinstance(action, argparse._HelpAction):
                continue
            if action.default in (None, False, argparse.SUPPRESS) or action.default == []:
                continue  # nothing to show: an optional input, a switch that is off
            shown = action.help and "default" in action.help.lower()  # "(default: %(default)s)", "(default: all)"
            if not shown:
                hidden.append(f"sslam {name} {action.option_strings[-1]} (default {action.default!r})")
        assert help_text
    assert hidden == []


def test_the_top_page_is_for_users(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    text = capsys.readouterr().out
    assert text.splitlines()[2].startswith("Embed audio with SSLAM/EAT encoders")
    assert "sslam extract hf:ta012/SSLAM_pretrain" in text and "make demo" in text
