import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def char_tok():
    from harness.runtime.models import char_tokenizer
    return char_tokenizer()


@pytest.fixture(scope="session")
def bpe_tok():
    """A real byte-level BPE tokenizer trained here (no hub), whose merges cross step boundaries (e.g. '2;2')."""
    from harness.runtime.models import bpe_tokenizer
    corpus = ["1a+1=2;2b+3=5;#5", "3a*3=9;9b-1=8;#8", "2;2b", "=2;2", "Problem: 12 apples\n\nSolution: $x=2$."] * 50
    return bpe_tokenizer(corpus, vocab_size=300)
