"""Placeholder for `genkit bench`, replaced by its implementation."""

import argparse


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run_bench(args: argparse.Namespace) -> int:
    raise NotImplementedError
