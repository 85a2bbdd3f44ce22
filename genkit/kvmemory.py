"""Placeholder for `genkit kv_memory`, replaced by its implementation."""

import argparse


def add_kv_memory_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run_kv_memory(args: argparse.Namespace) -> int:
    raise NotImplementedError
