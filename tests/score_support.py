"""Shared helpers for the scoring and lm-eval backend tests (no tests here): an offline
word-level tokenizer over the tiny models' 96-token vocabulary, HFLM on a tiny model, and
random scoring requests."""

from __future__ import annotations

import random
from functools import cache

from test_runner_support import VOCAB

SPECIALS = ["<unk>", "<s>", "</s>"]
WORDS = ["the", "a", "an", "of", "to", "in", "on", "at", "is", "was", "are", "be", "it", "this", "that", "with", "for", "as", "by", "from", "and", "or", "not", "but", "what", "which", "who", "when", "where", "why", "how", "question", "answer", "true", "false", "yes", "no", "cat", "dog", "bird", "fish", "tree", "house", "car", "road", "river", "city", "sun", "moon", "star", "sky", "red", "blue", "green", "black", "white", "big", "small", "old", "new", "fast", "slow", "hot", "cold", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "run", "walk", "eat", "see", "make", "take", "give", "find", "think", "say", "go", "come", "?", ".", ",", ":", "!", ";", "-"]
assert len(SPECIALS) + len(WORDS) == VOCAB, len(WORDS)


@cache
def word_tokenizer():
    """A PreTrainedTokenizerFast (word level, whitespace split, BOS prepended like Llama's),
    built offline; ids match the tiny models' vocabulary of 96."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(SPECIALS + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="</s>",
        model_max_length=10**30,
    )


def random_text(rng: random.Random, n_words: int) -> str:
    return " ".join(rng.choice(WORDS[:-8]) for _ in range(n_words))


def hflm(model, **kwargs):
    from lm_eval.models.huggingface import HFLM

    return HFLM(pretrained=model, tokenizer=word_tokenizer(), batch_size=kwargs.pop("batch_size", 4), **kwargs)
