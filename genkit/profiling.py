"""Placeholder for `genkit profile`, replaced by its implementation."""

import argparse


def add_profile_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run_profile(args: argparse.Namespace) -> int:
    raise NotImplementedError
