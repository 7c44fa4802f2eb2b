"""Loads the offline test documents (tiny_docs.json beside this file) for the tiny lm-eval
tasks of tests/test_harness.py; no network, no hub."""

import json
from pathlib import Path

import datasets


def _split(key: str) -> datasets.DatasetDict:
    docs = json.loads((Path(__file__).parent / "tiny_docs.json").read_text())[key]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(docs)})


def multiple_choice(**kwargs) -> datasets.DatasetDict:
    return _split("multiple_choice")


def texts(**kwargs) -> datasets.DatasetDict:
    return _split("texts")
