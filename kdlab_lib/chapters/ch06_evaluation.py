"""Chapter 06's experiments: evaluating a distilled student beyond its headline number.

A *family* is a shipped teacher with its students (scratch and distilled, trained with the
library). For each family we build a **bundle**: every model's predictions on the same test
data, one value per example (a 0/1 mistake for MNIST, a next-token loss for the language
models), and the categories that split the examples (digit class; token-frequency bucket and
token type). From a bundle:

- ``gap_report``: headline metric of a teacher and a student, the per-category gap sorted
  (``metrics.category_gap``), the worst categories with examples;
- ``calibration``: ECE (``metrics.expected_calibration_error``'s binning) before and after
  **temperature scaling** (Guo et al. 2017: one scalar T fitted on *validation* data by minimising
  the NLL; the arg-max, so accuracy, never changes);
- ``fidelity``: top-1 agreement and KL to the teacher on data the student trained on and on data
  it never saw (Stanton et al. 2021), and who is right where they disagree;
- ``robustness`` (MNIST): errors under input noise, shifts and rotations, and confidence on
  Fashion-MNIST (out of distribution); for the language models, held-out Wikipedia text.

A family whose shipped teacher is missing is listed by ``family_status`` as unavailable, with the
one command that creates it; nothing else depends on it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from ..core import config, datasets, metrics, models, text, train_text
from ..core.tables import Bullets, Table
from . import ch01_soft_labels as ch01
from . import ch02_distilbert as ch02
from . import ch03_gpt2 as ch03


@dataclass(frozen=True)
class Family:
    teacher: str          # the shipped model's short name (data/models/NAME)
    metric: str           # the headline metric
    categories: str       # what the gap table splits by
    task: str


@dataclass
class Bundle:
    """A family's models scored on the same examples: what every report below reads.

    ``per_example[name]`` holds one value per test example ``(N,)`` (a 0/1 mistake, a next-token loss)
    and ``categories[by] = (category id per example (N,), category names)`` splits them; ``headline``
    is each model's headline metric. The rest depends on the kind of data (``kind``)."""
    family: str                                # e.g. "MNIST digits"
    kind: str                                  # "images", "tokens" or "texts"
    metric: str                                # the headline metric, e.g. "test errors"
    measure: str                               # what one per-example value is, e.g. "error rate"
    lower_is_better: bool
    models: list[str]
    per_example: dict[str, torch.Tensor]       # model -> (N,)
    headline: dict[str, float]                 # model -> the headline metric
    categories: dict[str, tuple[torch.Tensor, list[str]]]
    teacher: str = "teacher"
    logits: dict = field(default_factory=dict)    # split -> model -> logits (classifiers)
    labels: dict = field(default_factory=dict)    # split -> labels (classifiers)
    pred: dict = field(default_factory=dict)      # model -> test predictions (classifiers)
    images: torch.Tensor | None = None            # the test images (MNIST)
    ood_images: torch.Tensor | None = None        # Fashion-MNIST, where installed
    ood_note: str | None = None                   # why the out-of-distribution check is skipped
    texts: list[str] | None = None                # the test snippets (sentiment)
    target: torch.Tensor | None = None            # the predicted token at every position (GPT-2)
    token_strings: list[str] | None = None        # each token id as text (GPT-2)
    stats: dict | None = None                     # lm_stats per split (GPT-2)
    temperatures: dict | None = None              # fitted temperatures (GPT-2)
    min_token_count: int = 5                      # a token's examples shown once it occurs this often


FAMILIES = {
    "MNIST digits": Family("mnist", "test errors", "digit class", "classify handwritten digits"),
    "GPT-2 (Shakespeare)": Family("gpt2-tiny", "perplexity", "token frequency, token type", "next-token prediction"),
    "sentiment (BERT)": Family("bert-tiny", "test accuracy", "class", "movie-review sentiment"),
}


def family_status() -> dict:
    """Per family: is its shipped teacher here? If not, the one command that creates it."""
    out = {}
    for name, fam in FAMILIES.items():
        here = (config.MODELS_DIR / fam.teacher / "card.json").exists()
        command = f"kdlab prepare --only {fam.teacher}"
        out[name] = {"available": here, "teacher": fam.teacher, "command": command,
                     "message": "available" if here else
                     f"unavailable: its teacher data/models/{fam.teacher} is not shipped yet; create it with "
                     f"`{command}`"}
    return out


# ----------------------------------------------------------------------- MNIST

def mnist_budget(**overrides) -> ch01.MnistBudget:
    """Chapter 01's 800-800 student and recipe (T = 20, alpha = 0.1), 8 epochs instead of 20 (the
    bench trains 2 students x 3 seeds); quick mode: chapter 01's tiny budget."""
    return ch01.budget(**{"epochs": config.budget(8, 1), **overrides})


def mnist_notebook_budget(**overrides) -> ch01.MnistBudget:
    """The notebook's live budget: the bench's on 10,000 training digits (about a minute for both)."""
    b = mnist_budget(**overrides)
    return b if config.QUICK else replace(b, n_train=overrides.get("n_train", 10_000))


def mnist_students(teacher, b: ch01.MnistBudget, seed: int = 0, progress: bool = True,
                   targets=None) -> dict:
    """A scratch and a distilled student (``ch01.train_scratch`` / ``train_distilled``) on the
    transfer set of ``b``; ``targets``: the teacher's logits on it, if already computed."""
    data = ch01.transfer_set(b)
    targets = ch01.teacher_targets(teacher, data) if targets is None else targets
    return {"scratch": ch01.train_scratch(b, data, seed, progress).eval(),
            "distilled": ch01.train_distilled(b, data, targets, seed, progress).eval()}


def mnist_bundle(named_models: dict, b: ch01.MnistBudget, *, n_val: int | None = None,
                 n_seen: int | None = None) -> Bundle:
    """Every model's logits on the test digits, the validation digits (for temperature scaling), the
    training digits the students saw (for fidelity) and Fashion-MNIST (out of distribution, when
    installed). ``named_models``: ``{"teacher": ..., "scratch": ..., "distilled": ...}``."""
    n_val = n_val or config.budget(10_000, 1_000)
    n_seen = n_seen or config.budget(5_000, 500)
    test = ch01.test_set(b)
    sets = {"test": test, "val": datasets.take(datasets.load_mnist("val"), n_val, seed=0),
            "seen": datasets.take(ch01.transfer_set(b), n_seen, seed=0)}
    ood_note = None
    if datasets.fashion_mnist_available():
        sets["ood"] = datasets.take(datasets.load_fashion_mnist("test"), b.n_test, seed=0)
    else:
        ood_note = (f"Fashion-MNIST is not installed, so the out-of-distribution check is skipped: "
                    f"`{datasets.INSTALL_FASHION}`")
    logits = {split: {name: metrics.predict(m, ds, batch_size=500) for name, m in named_models.items()}
              for split, ds in sets.items()}
    labels = {split: ds.tensors[1] for split, ds in sets.items()}
    y = labels["test"]
    pred = {name: lg.argmax(-1) for name, lg in logits["test"].items()}
    return Bundle(family="MNIST digits", kind="images", metric="test errors", measure="error rate",
                  lower_is_better=True, models=list(named_models),
                  per_example={name: (p != y).float() for name, p in pred.items()},
                  headline={name: int((p != y).sum()) for name, p in pred.items()},
                  categories={"digit class": (y, [str(c) for c in range(10)])},
                  images=test.tensors[0], labels=labels, logits=logits, pred=pred, ood_note=ood_note,
                  ood_images=sets["ood"].tensors[0] if "ood" in sets else None)


# ------------------------------------------------------------------- gap report

def gap_report(bundle: Bundle, teacher: str | None = None, student: str = "distilled", *, by: str | None = None,
               top: int = 3, n_examples: int = 6) -> dict:
    """Headline metric of ``teacher`` and ``student``, the per-category gap table sorted (largest
    shortfall first, ``metrics.category_gap``), and the ``top`` categories where the student falls
    shortest, each with up to ``n_examples`` examples: digits the student gets wrong and the teacher
    right, or the tokens of the bucket whose loss grew most."""
    teacher = teacher or bundle.teacher
    by = by or next(iter(bundle.categories))
    if by not in bundle.categories:
        raise ValueError(f"by must be one of {list(bundle.categories)}, got {by!r}")
    for name in (teacher, student):
        if name not in bundle.per_example:
            raise ValueError(f"{name!r} is not among this family's models {list(bundle.per_example)}")
    if teacher == student:
        raise ValueError("pick two different models")
    cats, names = bundle.categories[by]
    pe = bundle.per_example
    table = metrics.category_gap({teacher: pe[teacher], student: pe[student]}, cats, teacher=teacher,
                                 names=names, measure=bundle.measure, lower_is_better=bundle.lower_is_better,
                                 min_count=1)
    rows = table.rows[:-1]
    worst = [{"category": r[0], "n": r[1], "teacher": r[2], "student": r[3], "gap": r[4]}
             for r in rows[:top] if r[4] > 0]
    for w in worst:
        cid = list(names).index(w["category"])
        if bundle.kind == "tokens":
            w["examples"] = _token_examples(bundle, by, cid, teacher, student, n_examples)
        else:
            w["examples"] = _image_examples(bundle, by, cid, teacher, student, n_examples)
    return {"family": bundle.family, "teacher": teacher, "student": student, "by": by,
            "metric": bundle.metric, "measure": bundle.measure,
            "headline": {teacher: bundle.headline[teacher], student: bundle.headline[student]},
            "table": table, "worst": worst, "largest_gap": worst[0] if worst else None}


def _image_examples(bundle, by: str, cid: int, teacher: str, student: str, n: int) -> list[dict]:
    """Test examples of category ``cid`` that the student gets wrong and the teacher right (with their text
    for a text classifier)."""
    y = bundle.labels["test"]
    cats = bundle.categories[by][0]
    t, s = bundle.pred[teacher], bundle.pred[student]
    idx = ((cats == cid) & (s != y) & (t == y)).nonzero(as_tuple=True)[0][:n]
    out = [{"index": int(i), "label": int(y[i]), "teacher": int(t[i]), "student": int(s[i])} for i in idx]
    for e in out:
        if bundle.texts is not None:
            e["text"] = bundle.texts[e["index"]]
    return out


def _token_examples(bundle, by: str, cid: int, teacher: str, student: str, n: int) -> list[dict]:
    cats = bundle.categories[by][0]
    target, pe = bundle.target, bundle.per_example
    pick = cats == cid
    ids, dt, ds = target[pick], pe[teacher][pick], pe[student][pick]
    v = len(bundle.token_strings)
    count = torch.bincount(ids, minlength=v).float()
    summed = torch.bincount(ids, weights=ds, minlength=v) - torch.bincount(ids, weights=dt, minlength=v)
    gap = summed / count.clamp_min(1)
    gap = torch.where(count >= bundle.min_token_count, gap, torch.full_like(gap, float("-inf")))
    order = gap.argsort(descending=True)[:n]
    mean = lambda w: torch.bincount(ids, weights=w, minlength=v) / count.clamp_min(1)
    mt, ms = mean(dt), mean(ds)
    return [{"token": bundle.token_strings[int(i)], "count": int(count[i]), "teacher": float(mt[i]),
             "student": float(ms[i]), "gap": float(gap[i])} for i in order if torch.isfinite(gap[i])]


# ----------------------------------------------------- calibration and fidelity

def calibration(bundle: Bundle, temperatures=(0.5, 1.0, 2.0, 4.0)) -> dict:
    """Per model: ECE on the test data at T = 1, the temperature fitted on the validation data, ECE
    after scaling by it, and ECE at a few fixed temperatures (an MNIST bundle; the language models
    use ``lm_calibration``). Returns ``{"rows": {name: {...}}, "table": Table}``."""
    test, val = bundle.logits["test"], bundle.logits["val"]
    y, yv = bundle.labels["test"], bundle.labels["val"]
    rows = {}
    for name in bundle.models:
        t = metrics.fit_temperature(val[name], yv)
        rows[name] = {"ece": metrics.ece_at(test[name], y), "fitted_temperature": t,
                      "ece_scaled": metrics.ece_at(test[name], y, t),
                      "nll": float(F.cross_entropy(test[name], y)),
                      "nll_scaled": float(F.cross_entropy(test[name] / t, y)),
                      "mean_confidence": float(test[name].softmax(-1).max(-1).values.mean()),
                      "accuracy": metrics.accuracy(test[name], y),
                      "ece_at": {f"{tt:g}": metrics.ece_at(test[name], y, tt) for tt in temperatures}}
    unit = _examples(bundle)
    table = Table(["model", "accuracy", "mean confidence", "ECE", "T fitted on val", "ECE after scaling",
                   "NLL", "NLL after scaling"],
                  [[n, r["accuracy"], r["mean_confidence"], r["ece"], r["fitted_temperature"], r["ece_scaled"],
                    r["nll"], r["nll_scaled"]] for n, r in rows.items()], digits=[0, 4, 4, 4, 2, 4, 3, 3],
                  percent=("accuracy", "mean confidence", "ECE", "ECE after scaling"),
                  title=f"{bundle.family}: calibration on the test {unit} (15 equal-width bins), "
                        f"T fitted on the validation {unit}")
    return {"rows": rows, "table": table}


def _examples(bundle: Bundle) -> str:
    """What one test example of ``bundle`` is, for titles: digits, snippets, tokens."""
    return {"images": "digits", "texts": "snippets", "tokens": "tokens"}.get(bundle.kind, "examples")


def fidelity(bundle: Bundle, teacher: str = "teacher") -> dict:
    """Per student: accuracy, top-1 agreement and KL(p_teacher || p_student) (T = 1, nats) on the
    digits it trained on ("seen") and on the test digits ("unseen"), and who is right where it and
    the teacher disagree on the test digits."""
    rows = {}
    for name in bundle.models:
        if name == teacher:
            continue
        r = {}
        for split in ("seen", "test"):
            lg, tl, y = bundle.logits[split][name], bundle.logits[split][teacher], bundle.labels[split]
            r[split] = {"accuracy": metrics.accuracy(lg, y), "agreement": metrics.agreement(lg, tl),
                        "kl": metrics.kl_to_teacher(lg, tl)}
        r["disagreements"] = metrics.disagreements(bundle.logits["test"][name], bundle.logits["test"][teacher],
                                                   bundle.labels["test"])
        rows[name] = r
    acc_t = metrics.accuracy(bundle.logits["test"][teacher], bundle.labels["test"])
    table = Table(["student", "accuracy (unseen)", "teacher's accuracy", "agreement seen", "agreement unseen",
                   "KL seen", "KL unseen", "disagree", "student right", "teacher right"],
                  [[n, r["test"]["accuracy"], acc_t, r["seen"]["agreement"], r["test"]["agreement"], r["seen"]["kl"],
                    r["test"]["kl"], r["disagreements"]["disagree"], r["disagreements"]["student right"],
                    r["disagreements"]["teacher right"]] for n, r in rows.items()],
                  digits=[0, 4, 4, 4, 4, 3, 3, 0, 0, 0],
                  percent=("accuracy (unseen)", "teacher's accuracy", "agreement seen", "agreement unseen"),
                  title=f"{bundle.family}, fidelity: seen = training {_examples(bundle)} the student learned from, "
                        f"unseen = test {_examples(bundle)}")
    return {"rows": rows, "table": table}


# ------------------------------------------------------------------ robustness

def perturb(images: torch.Tensor, *, noise: float = 0.0, shift: float = 0.0, angle: float = 0.0,
            seed: int = 0) -> torch.Tensor:
    """Normalised MNIST images ``(N, 1, 28, 28)`` rotated by ``angle`` degrees, shifted by ``shift``
    pixels right and down, then given Gaussian pixel noise of std ``noise`` (in [0, 1] pixel units,
    seeded), clipped to [0, 1]; returned normalised again. All zero: the images unchanged."""
    from torchvision.transforms.v2 import functional as TF
    if noise < 0:
        raise ValueError(f"noise must be >= 0, got {noise}")
    if noise == 0 and shift == 0 and angle == 0:
        return images
    px = datasets.to_pixels(images)                                                   # (N, 1, 28, 28) in [0, 1]
    if shift or angle:
        px = TF.affine(px, angle=float(angle), translate=[float(shift), float(shift)], scale=1.0, shear=[0.0, 0.0],
                       interpolation=TF.InterpolationMode.BILINEAR, fill=0.0)
    if noise:
        g = torch.Generator().manual_seed(seed)
        px = (px + noise * torch.randn(px.shape, generator=g)).clamp(0.0, 1.0)
    return (px - datasets.MNIST_MEAN) / datasets.MNIST_STD


ROBUSTNESS_LEVELS = {  # kind -> levels (noise std in pixel units, shift in pixels, rotation in degrees)
    "noise": (0.0, 0.1, 0.2, 0.3, 0.4, 0.5),
    "shift": (0.0, 1.0, 2.0, 3.0, 4.0),
    "angle": (0.0, 10.0, 20.0, 30.0, 45.0),
}


def robustness(named_models: dict, test: TensorDataset, kind: str, levels=None, seed: int = 0) -> dict:
    """Test errors of each model as one perturbation grows: ``{"kind", "levels", "errors": {name: [...]}}``."""
    if kind not in ROBUSTNESS_LEVELS:
        raise ValueError(f"kind must be one of {list(ROBUSTNESS_LEVELS)}, got {kind!r}")
    levels = list(levels or ROBUSTNESS_LEVELS[kind])
    images, y = test.tensors
    errors = {name: [] for name in named_models}
    for level in levels:
        x = perturb(images, **{kind: level}, seed=seed)
        for name, m in named_models.items():
            errors[name].append(metrics.error_count(metrics.predict(m, x, batch_size=500), y))
    return {"kind": kind, "levels": levels, "errors": errors, "n": len(y)}


_LEVEL = {"noise": lambda v: f"noise, std {v:g}", "shift": lambda v: f"shift, {v:g} px",
          "angle": lambda v: f"rotation, {v:g}°"}


def robustness_table(sweeps: dict) -> Table:
    """``robustness`` sweeps ``{kind: result}`` as one table: a row per perturbation and level (noise std
    in pixel intensity [0, 1], shift in pixels, rotation in degrees), a column of test errors per model."""
    first = next(iter(sweeps.values()))
    names = list(first["errors"])
    rows = [[_LEVEL[kind](lv), *(r["errors"][n][i] for n in names)]
            for kind, r in sweeps.items() for i, lv in enumerate(r["levels"])]
    return Table(["perturbation", *names], rows,
                 title=f"test errors of {first['n']:,} digits as each perturbation grows (this run, one seed)")


def robustness_verdict(sweeps: dict) -> Bullets:
    """Per perturbation, at its largest level: which model makes the most errors (breaks first) and the
    fewest, with the counts."""
    lines = []
    for kind, r in sweeps.items():
        at = {n: e[-1] for n, e in r["errors"].items()}
        worst, best = max(at, key=at.get), min(at, key=at.get)
        who = lambda n: n if n == "teacher" else f"{n} student"
        lines.append(f"{_LEVEL[kind](r['levels'][-1])}: the {who(worst)} makes the most errors ({at[worst]:,} of "
                     f"{r['n']:,}), the {who(best)} the fewest ({at[best]:,})")
    return Bullets("\n".join(lines))


def out_of_distribution(bundle: Bundle) -> dict | None:
    """How sure each model is on Fashion-MNIST (clothes, never digits) beside the MNIST test digits:
    mean top probability, share of inputs above 90% confidence, and the AUROC of telling the two
    apart by confidence. None (with ``bundle.ood_note`` saying why) without Fashion-MNIST."""
    if "ood" not in bundle.logits:
        return None
    rows = {}
    for name in bundle.models:
        c_in = bundle.logits["test"][name].softmax(-1).max(-1).values
        c_out = bundle.logits["ood"][name].softmax(-1).max(-1).values
        rows[name] = {"confidence_mnist": float(c_in.mean()), "confidence_fashion": float(c_out.mean()),
                      "share_over_90_fashion": float((c_out > 0.9).float().mean()),
                      "auroc": metrics.ood_auroc(c_in, c_out)}
    table = Table(["model", "mean confidence, MNIST", "mean confidence, Fashion-MNIST",
                   "Fashion items with > 90%", "AUROC (MNIST vs Fashion)"],
                  [[n, r["confidence_mnist"], r["confidence_fashion"], r["share_over_90_fashion"], r["auroc"]]
                   for n, r in rows.items()], digits=[0, 4, 4, 3, 3],
                  percent=("mean confidence, MNIST", "mean confidence, Fashion-MNIST", "Fashion items with > 90%"),
                  title="out of distribution: the same models on Fashion-MNIST clothes")
    return {"rows": rows, "table": table}


# ----------------------------------------------------------- GPT-2 family

TOKEN_TYPES = ("word start", "word piece", "capitalised word start", "punctuation", "number", "line break / space")


def token_types(tokenizer, vocab_size: int | None = None) -> tuple[torch.Tensor, list[str]]:
    """Each token id's type ``(V,)`` (an index into ``TOKEN_TYPES``), from how it decodes: a word start
    begins with a space, a word piece continues a word, then capitalised word starts (often names in
    Shakespeare), punctuation, numbers, and whitespace (line breaks) alone."""
    v = vocab_size or tokenizer.vocab_size
    out = torch.empty(v, dtype=torch.long)
    for i in range(v):
        s = tokenizer.decode([i])
        core = s.lstrip(" ")
        if not s.strip():
            kind = "line break / space"
        elif any(ch.isdigit() for ch in core) and not any(ch.isalpha() for ch in core):
            kind = "number"
        elif not any(ch.isalnum() for ch in core):
            kind = "punctuation"
        elif s.startswith(" ") and core[:1].isupper():
            kind = "capitalised word start"
        elif s.startswith(" "):
            kind = "word start"
        else:
            kind = "word piece"
        out[i] = TOKEN_TYPES.index(kind)
    return out, list(TOKEN_TYPES)


def frequency_buckets(ranks: torch.Tensor) -> tuple[torch.Tensor, list[str]]:
    """Each token id's frequency bucket ``(V,)`` from its rank in the training text
    (``text.token_ranks``), with chapter 03's buckets (``ch03_gpt2.FREQUENCY_BUCKETS``)."""
    out = torch.empty_like(ranks)
    for k, (lo, hi, _name) in enumerate(ch03.FREQUENCY_BUCKETS):
        out[(ranks >= lo) & (ranks < hi if hi is not None else True)] = k
    return out, [name for _lo, _hi, name in ch03.FREQUENCY_BUCKETS]


def lm_notebook_budget(**overrides):
    """The notebook's two live GPT-2 students: chapter 03's notebook budget (batches of 8) for half
    its steps, so both train in about three minutes on 2 cores; quick mode: chapter 03's tiny one."""
    b = ch03.notebook_budget(**overrides)
    return b if config.QUICK else replace(b, steps=overrides.get("steps", b.steps // 2))


def lm_students(teacher, train_blocks: torch.Tensor, b, seed: int = 0, progress: bool = True) -> dict:
    """Chapter 03's scratch and distilled (forward KL, random start) 2 x 128 students at budget ``b``."""
    return {kind: ch03.train_student(kind, teacher, None, train_blocks, b, seed, progress)[0]
            for kind in ("scratch", "distilled")}


@torch.no_grad()
def lm_stats(named_models: dict, blocks: torch.Tensor, *, teacher: str = "teacher", temperatures: dict | None = None,
             batch_size: int = 4) -> dict:
    """Next-token statistics of each causal LM on ``blocks`` ``(N, S)``, one value per predicted position
    (flat ``(N·(S-1),)``, the same order for every model), streamed so no ``(N, S, V)`` tensor is kept:
    ``target``, and per model ``nll`` (nats), ``correct`` (top-1), ``conf`` (top probability), ``conf_T``
    and ``correct`` at the model's temperature in ``temperatures`` (default 1), and for every model but
    the teacher ``kl`` (KL(p_teacher || p_model), T = 1) and ``agree`` (top-1 agreement)."""
    temperatures = temperatures or {}
    n_pos = len(blocks) * (blocks.shape[1] - 1)
    # every output is allocated once, up front, and filled slice by slice: small tensors born inside the
    # loop would sit between the batches' large transient buffers and keep glibc from reusing them
    # (the process then grew by ~1.4 GB over 200 blocks; it stays flat this way)
    out = {"target": blocks[:, 1:].reshape(-1).clone()}
    for name in named_models:
        keys = ("nll", "correct", "conf", "conf_T") + (("kl", "agree") if name != teacher and teacher in named_models
                                                       else ())
        out[name] = {k: torch.empty(n_pos) for k in keys}
    pos = 0
    for i in range(0, len(blocks), batch_size):
        x = blocks[i:i + batch_size]
        y = x[:, 1:].flatten()                                                            # (B·(S-1),)
        sl = slice(pos, pos + len(y))
        pos += len(y)
        logits = {name: m(input_ids=x.to(next(m.parameters()).device)).logits[:, :-1].float().flatten(0, 1).cpu()
                  for name, m in named_models.items()}                                    # (B·(S-1), V) each
        t_logp = logits[teacher].log_softmax(-1) if teacher in logits else None
        for name, lg in logits.items():
            logp = lg.log_softmax(-1)
            o = out[name]
            o["nll"][sl] = -logp.gather(-1, y[:, None])[:, 0]
            conf, pred = logp.max(-1)
            o["correct"][sl] = (pred == y).float()
            o["conf"][sl] = conf.exp()
            o["conf_T"][sl] = (lg / temperatures.get(name, 1.0)).softmax(-1).max(-1).values
            if "kl" in o:
                o["kl"][sl] = (t_logp.exp() * (t_logp - logp)).sum(-1)
                o["agree"][sl] = (pred == t_logp.argmax(-1)).float()
            del logp
        del logits, t_logp
    return out


@torch.no_grad()
def lm_fit_temperatures(named_models: dict, blocks: torch.Tensor, *, max_positions: int = 4_000) -> dict:
    """Temperature scaling for each LM, fitted on at most ``max_positions`` next-token predictions of
    validation ``blocks`` (their logits are kept: 4,000 x 4,096 floats = 66 MB per model)."""
    n_blocks = max(1, math.ceil(max_positions / (blocks.shape[1] - 1)))
    x = blocks[:n_blocks]
    y = x[:, 1:].flatten()
    out = {}
    for name, m in named_models.items():
        logits = torch.cat([m(input_ids=x[i:i + 8].to(next(m.parameters()).device)).logits[:, :-1].float()
                            .flatten(0, 1).cpu() for i in range(0, len(x), 8)])
        out[name] = metrics.fit_temperature(logits, y)
        del logits
    return out


def lm_bundle(named_models: dict, tokenizer, train_blocks: torch.Tensor, test_blocks: torch.Tensor,
              val_blocks: torch.Tensor, shifted_blocks: torch.Tensor | None = None) -> Bundle:
    """The GPT-2 family's bundle: per-position next-token losses on the held-out Shakespeare
    ``test_blocks``, split by the target token's frequency bucket (ranks from ``train_blocks``) and
    type; temperatures fitted on ``val_blocks``; the same statistics on ``shifted_blocks`` (held-out
    Wikipedia: a corpus the teacher never read) when given."""
    v = tokenizer.vocab_size
    temps = lm_fit_temperatures(named_models, val_blocks)
    stats = {"test": lm_stats(named_models, test_blocks, temperatures=temps)}
    if shifted_blocks is not None:
        stats["shifted"] = lm_stats(named_models, shifted_blocks, temperatures=temps)
    target = stats["test"]["target"]
    bucket_of, bucket_names = frequency_buckets(text.token_ranks(train_blocks, v))
    type_of, type_names = token_types(tokenizer, v)
    names = list(named_models)
    return Bundle(family="GPT-2 (Shakespeare)", kind="tokens", metric="perplexity", measure="loss (nats)",
                  lower_is_better=True, models=names, target=target,
                  per_example={n: stats["test"][n]["nll"] for n in names},
                  headline={n: math.exp(float(stats["test"][n]["nll"].mean())) for n in names},
                  categories={"token frequency": (bucket_of[target], bucket_names),
                              "token type": (type_of[target], type_names)},
                  token_strings=[tokenizer.decode([i]).replace("\n", "\\n") for i in range(v)],
                  stats=stats, temperatures=temps, min_token_count=config.budget(10, 1))


def lm_calibration(bundle: Bundle) -> dict:
    """Per LM: next-token ECE (top-1 confidence, 15 equal-width bins) on the test blocks at T = 1 and
    at the temperature fitted on the validation blocks."""
    rows = {}
    s = bundle.stats["test"]
    for name in bundle.models:
        r = s[name]
        rows[name] = {"accuracy": float(r["correct"].mean()), "mean_confidence": float(r["conf"].mean()),
                      "ece": metrics.confidence_bins(r["conf"], r["correct"])["ece"],
                      "fitted_temperature": bundle.temperatures[name],
                      "ece_scaled": metrics.confidence_bins(r["conf_T"], r["correct"])["ece"]}
    table = Table(["model", "top-1 accuracy", "mean confidence", "ECE", "T fitted on val", "ECE after scaling"],
                  [[n, r["accuracy"], r["mean_confidence"], r["ece"], r["fitted_temperature"], r["ece_scaled"]]
                   for n, r in rows.items()], digits=[0, 4, 4, 4, 2, 4],
                  percent=("top-1 accuracy", "mean confidence", "ECE", "ECE after scaling"),
                  title="next-token calibration on held-out Shakespeare (15 equal-width bins), "
                        "T fitted on the validation blocks")
    return {"rows": rows, "table": table}


def lm_fidelity_and_shift(bundle: Bundle) -> dict:
    """Per LM on held-out Shakespeare and on held-out Wikipedia (the shifted corpus): perplexity, and
    for the students top-1 agreement and KL(p_teacher || p_student) per token."""
    rows = {}
    for split, s in bundle.stats.items():
        for name in bundle.models:
            r = s[name]
            rows.setdefault(name, {})[split] = {
                "perplexity": math.exp(float(r["nll"].mean())), "accuracy": float(r["correct"].mean()),
                "agreement": float(r["agree"].mean()) if "agree" in r else None,
                "kl": float(r["kl"].mean()) if "kl" in r else None}
    splits = list(bundle.stats)
    label = {"test": "Shakespeare", "shifted": "Wikipedia"}
    headers = ["model"] + [f"{h}, {label[sp]}" for sp in splits for h in ("perplexity", "agreement", "KL")]
    table = Table(headers, [[n] + [x if x is not None else "-" for sp in splits
                                   for x in (r[sp]["perplexity"], r[sp]["agreement"], r[sp]["kl"])]
                            for n, r in rows.items()], digits=[0, *([1, 4, 3] * len(splits))],
                  percent=tuple(f"agreement, {label[sp]}" for sp in splits),
                  title="held-out Shakespeare (the teacher's corpus) vs held-out Wikipedia (shifted)")
    return {"rows": rows, "table": table}


def finetune_summary(gpt2_results: dict) -> Table:
    """Distillation vs fine-tuning (section 13.7), from ``kdlab bench gpt2``'s results: chapter 03's four
    students at one budget, their held-out perplexity (mean ± std over seeds) and what each needs."""
    needs = {"scratch (hard labels)": "the text only",
             "pretrained on wiki, fine-tuned (hard labels)": "a pretrained student + the text",
             "distilled (forward KL)": "the teacher at training time (a forward pass per batch)",
             "pretrained on wiki, then distilled": "a pretrained student + the teacher"}
    teacher = gpt2_results["teacher"]["val_perplexity"]
    rows = [[name, r["mean"], r["std"], r["mean"] / teacher, needs.get(name, "")]
            for name, r in gpt2_results["compare"].items()]
    return Table(["student (2 x 128)", "perplexity (mean)", "std over seeds", "x teacher's", "needs"], rows, digits=1,
                 title=f"distillation vs fine-tuning: teacher perplexity {teacher:.1f}",
                 note=f"read from data/results/gpt2.json ({gpt2_results['command']}, commit "
                      f"{gpt2_results['git_commit'][:7]}, seeds {gpt2_results['seeds']}); re-create with "
                      f"`{gpt2_results['command']}`")


def lm_data(tok, b) -> dict:
    """The GPT-2 family's blocks at budget ``b``: Shakespeare ``train`` (the students' text, and the
    token-frequency ranks), ``val`` (temperature scaling), ``test`` (the gap report and calibration;
    ``b.n_val_blocks`` blocks of the test split, which chapter 03 never used) and ``wiki``: as many
    blocks of held-out Wikipedia (the shifted corpus).

    It first drops the cached MNIST tensors (``release_training_digits``): chapter 06 has trained its
    MNIST students by then, and the ~190 MB of training digits go back to the system before the
    language models train (``datasets.load_mnist`` reads them again if anything asks)."""
    release_training_digits()
    n = b.n_val_blocks
    return {"train": ch03.shakespeare_blocks(tok, "train", b), "val": ch03.shakespeare_blocks(tok, "val", b),
            "test": text.token_blocks(text.load_corpus("shakespeare", "test"), tok, b.block)[:n],
            "wiki": text.token_blocks(text.load_corpus("wiki", "test"), tok, b.block)[:n]}


def confident_ood_examples(bundle: Bundle, model: str, k: int = 8) -> list[dict]:
    """The ``k`` Fashion-MNIST items ``model`` is most sure are digits: index (into
    ``bundle.ood_images``), which digit, confidence, and what the item really is."""
    if "ood" not in bundle.logits:
        return []
    probs = bundle.logits["ood"][model].softmax(-1)
    conf, pred = probs.max(-1)
    order = conf.argsort(descending=True)[:k]
    return [{"index": int(i), "digit": int(pred[i]), "confidence": float(conf[i]),
             "item": datasets.FASHION_CLASSES[int(bundle.labels["ood"][i])]} for i in order]


def calibration_verdict(rows: dict, teacher: str = "teacher") -> Bullets:
    """In words, from measured ECEs: is the distilled student better or worse calibrated than the one
    trained from scratch (and than the teacher), before and after temperature scaling?"""
    d, s = rows["distilled"], rows["scratch"]
    word = lambda a, b: "lower (better calibrated)" if a < b else "higher (worse calibrated)" if a > b else "the same"
    return Bullets(f"distilled ECE {d['ece']:.2%}: {word(d['ece'], s['ece'])} than scratch ({s['ece']:.2%}), "
                   f"{word(d['ece'], rows[teacher]['ece'])} than the teacher ({rows[teacher]['ece']:.2%})\n"
                   f"after temperature scaling: distilled {d['ece_scaled']:.2%}, scratch {s['ece_scaled']:.2%}, "
                   f"teacher {rows[teacher]['ece_scaled']:.2%}")


def bench_pairs_table(family: dict) -> tuple[list, list]:
    """Headers and rows of a ``kdlab bench eval`` family: the teacher, then each student's mean ± std over
    seeds of the headline metric, ECE before / after temperature scaling, agreement, KL, and its largest
    per-category gap (the category most often largest over the seeds, with the mean gap there)."""
    t = family["teacher"]
    head = "test_errors" if "test_errors" in t else "perplexity"
    fmt = {head: "{:,.1f}", "ece": "{:.4f}", "ece_scaled": "{:.4f}", "agreement": "{:.4f}", "kl": "{:.3f}"}
    pm = lambda d, k: f"{fmt[k].format(d['mean'])} ± {fmt[k].format(d['std'])}"
    gap_keys = [k for k in family["pairs"][next(iter(family["pairs"]))]["per_seed"][0] if k.startswith("largest")]
    headers = ["model", head.replace("_", " "), "ECE", "ECE after scaling", "agreement", "KL to teacher",
               *(k.replace("largest_class_gap", "largest class gap").replace("largest_gap_by_", "largest gap by ")
                 .replace("_", " ") for k in gap_keys)]
    shown = f"{t[head]:,}" if isinstance(t[head], int) else fmt[head].format(t[head])
    rows = [["teacher", shown, f"{t['ece']:.4f}", f"{t['ece_scaled']:.4f}", "-", "-",
             *("-" for _ in gap_keys)]]
    for name, pair in family["pairs"].items():
        s = pair["summary"]
        gaps = []
        for k in gap_keys:
            seen = [r[k] for r in pair["per_seed"] if r[k]]
            if not seen:
                gaps.append("none")
                continue
            cats = [g["category"] for g in seen]
            top = max(dict.fromkeys(cats), key=cats.count)   # ties: the first seen (a set's order varies per run)
            mean_gap = sum(g["gap"] for g in seen if g["category"] == top) / cats.count(top)
            gaps.append(f"{top} ({cats.count(top)}/{len(pair['per_seed'])} seeds, gap {mean_gap:+.3f})")
        rows.append([name, *(pm(s[k], k) for k in (head, "ece", "ece_scaled", "agreement", "kl")), *gaps])
    return headers, rows


# ------------------------------------------------------- sentiment (BERT) family

SENTIMENT_CLASSES = ("rotten (negative)", "fresh (positive)")
LENGTH_BUCKETS = ((0, 13, "up to 12 tokens"), (13, 25, "13-24 tokens"), (25, None, "25 tokens or more"))


def sentiment_students(teacher_mlm, tok, b, seed: int = 0, progress: bool = True) -> dict:
    """Chapter 02's sentiment pair: the shipped BERT teacher fine-tuned on Rotten Tomatoes (the teacher
    classifier), and two DistilBERT-style students made from its layers ``b.student_layers``: one
    fine-tuned on the labels, one distilled from the teacher classifier (``train_text.distill_classifier``,
    T and alpha from ``ClassifierKDConfig``). ``b``: an ``ch02_distilbert.BertBudget``."""
    import copy
    train = ch02.sentiment_tensors(tok, "train", b.max_len, b.n_sentiment)
    teacher = ch02.fine_tune(copy.deepcopy(teacher_mlm), train, b, seed, progress).eval()
    tuned = ch02.fine_tune(ch02.make_student(teacher_mlm, b, "teacher", seed), train, b, seed, progress).eval()
    student = models.to_classifier(ch02.make_student(teacher_mlm, b, "teacher", seed))
    train_text.distill_classifier(student, teacher, *train, ch02.sentiment_config(b, seed), progress=progress)
    return {"teacher": teacher, "fine-tuned": tuned, "distilled": student.eval()}


def sentiment_bundle(named_classifiers: dict, tok, b) -> Bundle:
    """The sentiment family's bundle: every classifier's logits on the test snippets (gap report,
    calibration), the validation snippets (temperature scaling) and training snippets ("seen",
    fidelity); categories: the true class and the snippet's length in tokens."""
    sets = {"test": ch02.sentiment_tensors(tok, "test", b.max_len, b.n_eval),
            "val": ch02.sentiment_tensors(tok, "val", b.max_len, b.n_eval),
            "seen": ch02.sentiment_tensors(tok, "train", b.max_len, b.n_eval or config.budget(1_000, 64))}
    logits = {split: {n: metrics.classifier_logits(m, ids, mask) for n, m in named_classifiers.items()}
              for split, (ids, mask, _y) in sets.items()}
    labels = {split: y for split, (_i, _m, y) in sets.items()}
    y = labels["test"]
    length = sets["test"][1].sum(-1) - 2                                                   # tokens without [CLS] [SEP]
    length_of = torch.zeros_like(length)
    for k, (lo, hi, _n) in enumerate(LENGTH_BUCKETS):
        length_of[(length >= lo) & (length < hi if hi is not None else True)] = k
    pred = {n: lg.argmax(-1) for n, lg in logits["test"].items()}
    texts = [t for t, _ in ch02.sentiment_snippets("test", b.n_eval)]
    return Bundle(family="sentiment (BERT)", kind="texts", metric="test errors", measure="error rate",
                  lower_is_better=True, models=list(named_classifiers),
                  per_example={n: (p != y).float() for n, p in pred.items()},
                  headline={n: int((p != y).sum()) for n, p in pred.items()},
                  categories={"class": (y, list(SENTIMENT_CLASSES)),
                              "snippet length": (length_of, [n for _lo, _hi, n in LENGTH_BUCKETS])},
                  labels=labels, logits=logits, pred=pred, texts=texts)


def sentiment_family_bundle(b=None, seed: int = 0, progress: bool = True) -> Bundle:
    """The sentiment family in one call, as chapter 06 shows it: loads the shipped BERT teacher
    (``ch02_distilbert.load``), trains its classifiers (``sentiment_students``) at budget ``b`` (default
    ``ch02_distilbert.budget()``) and returns their ``sentiment_bundle``. The bundle keeps every
    classifier's logits, not the models: the teacher's MLM and the classifiers are dropped and their
    memory released (``config.release_memory``) before it returns."""
    b = b or ch02.budget()
    teacher_mlm, tok = ch02.load()
    named = sentiment_students(teacher_mlm, tok, b, seed, progress)
    del teacher_mlm
    bundle = sentiment_bundle(named, tok, b)
    del named
    config.release_memory()
    return bundle


def release_training_digits() -> None:
    """Drop the cached MNIST tensors (the 60,000 training images alone are ~190 MB as floats) once a notebook
    has trained on them, before it loads a language model; ``datasets.load_mnist`` reads them again if asked.
    The freed heap goes back to the system (``config.release_memory``), not only to Python."""
    datasets._mnist_tensors.cache_clear()
    config.release_memory()


def bench_calibration_verdict(family: dict) -> str:
    """From a ``kdlab bench eval`` family: is the distilled student's mean ECE lower or higher than its
    baseline's (the student trained on labels alone: "scratch", or "fine-tuned" for the sentiment family),
    and is the difference larger than the noise (chapter 01's rule: two standard deviations of the noisier
    of the two over seeds)? Then the same after scaling."""
    pairs = family["pairs"]
    base = next((b for b in ("scratch", "fine-tuned") if b in pairs), None)
    if "distilled" not in pairs or base is None:
        return Bullets("this family has no distilled student and baseline (scratch or fine-tuned) to compare")
    out = []
    for key, when in (("ece", "before temperature scaling"), ("ece_scaled", "after it")):
        d, s = pairs["distilled"]["summary"][key], pairs[base]["summary"][key]
        word = "lower" if d["mean"] < s["mean"] else "higher"
        out.append(f"{when}: distilled {d['mean']:.4f} vs {base} {s['mean']:.4f}, {word}, by "
                   f"{'more' if metrics.beyond_noise(d, s) else 'no more'} than two standard deviations over "
                   f"seeds ({metrics.noise_band(d, s):.4f})")
    return Bullets("\n".join(out))


# ------------------------------------------------- the reading, the budgets, takeaways

# the course module (seeds/04-distillation-course-module.txt, "limits of distillation")
READING_ON_CALIBRATION = ("Calibration is another casualty. DistilBERT and similar models are generally less "
                          "well-calibrated than their teachers.")


def _vs_teacher(ev: dict) -> list[dict]:
    """Per family of ``kdlab bench eval``'s results: the distilled student's ECE over seeds, its teacher's,
    and the verdict: +1 (less calibrated than the teacher by more than two standard deviations), -1
    (better), 0 (inside two standard deviations: the larger of the student's and, where the teacher was
    fine-tuned per seed, the teacher's)."""
    out = []
    for name, fam in ev["families"].items():
        if "distilled" not in fam.get("pairs", {}):
            continue
        d, t = fam["pairs"]["distilled"]["summary"]["ece"], fam["teacher"]
        per_seed = [r["ece"] for r in t.get("fine-tuned per seed", [])]
        t_std = metrics.mean_std(per_seed)["std"] if len(per_seed) > 1 else 0.0
        diff, noise = d["mean"] - t["ece"], metrics.noise_band(d, {"std": t_std})
        out.append({"family": name, "student": d, "teacher": t["ece"], "seeds": len(fam["seeds"]),
                    "sign": 1 if diff > noise else -1 if diff < -noise else 0})
    return out


def calibration_vs_teacher(ev: dict) -> Bullets:
    """From ``kdlab bench eval``'s results: per family, the distilled student's ECE (mean ± std over
    seeds) against its teacher's, and whether it is less or better calibrated (``_vs_teacher``)."""
    verdict = {1: "the student is LESS calibrated than its teacher",
               -1: "the student is BETTER calibrated than its teacher",
               0: "within two standard deviations: no difference we can tell from noise"}
    lines = [f"{r['student']['mean']:.2%} ± {r['student']['std']:.2%} ECE for the distilled student vs "
             f"{r['teacher']:.2%} for the teacher, {r['family']} ({r['seeds']} seeds): {verdict[r['sign']]}"
             for r in _vs_teacher(ev)]
    return Bullets("\n".join(lines) or "no family with a distilled student in this results file")


def mnist_budgets_note(ev: dict, mnist_results: dict) -> Bullets:
    """One sentence: the MNIST students of ``kdlab bench eval`` and of chapter 01's ``kdlab bench mnist``
    train for different numbers of epochs (each file's "budget" entry)."""
    e, m = ev["families"]["MNIST digits"]["budget"], mnist_results["budget"]
    digits = (f"both on {e['n_train']:,} training digits" if e["n_train"] == m["n_train"] else
              f"on {e['n_train']:,} and {m['n_train']:,} training digits")
    return Bullets(f"{e['epochs']} epochs per MNIST student in eval.json against {m['epochs']} in chapter 01's "
                   f"mnist.json ({digits}): the budgets differ, so compare error counts within a file, not "
                   f"across the two.")


def takeaways(mnist: Bundle, sweeps: dict, ev: dict | None = None) -> Bullets:
    """The chapter's takeaways with the numbers of this run (``mnist``'s bundle, the ``robustness``
    sweeps) and, where given, of ``kdlab bench eval``'s results ``ev``."""
    gap = gap_report(mnist, "teacher", "distilled")["largest_gap"]
    cal, fid = calibration(mnist)["rows"], fidelity(mnist)["rows"]["distilled"]
    d = fid["disagreements"]
    lines = [f"{gap['student']:.1%} error rate on digit {gap['category']} for the distilled student against the "
             f"teacher's {gap['teacher']:.1%}: its largest shortfall, which one headline number hides"
             if gap else "the distilled student falls short of the teacher on no digit class (this run)",
             "ECE (15 equal-width bins) " + ", ".join(f"{n} {r['ece']:.2%}" for n, r in cal.items())
             + "; after temperature scaling " + ", ".join(f"{n} {r['ece_scaled']:.2%}" for n, r in cal.items())
             + ", the accuracy unchanged",
             f"{fid['test']['agreement']:.2%} top-1 agreement with the teacher on unseen digits; of the "
             f"{d['disagree']:,} disagreements the student is right on {d['student right']:,}",
             str(robustness_verdict({"noise": sweeps["noise"]})).strip()]
    ood = out_of_distribution(mnist)
    if ood:
        lines.append(f"{ood['rows']['distilled']['share_over_90_fashion']:.1%} of Fashion-MNIST clothes get over 90% "
                     f"confidence from the distilled student (AUROC {ood['rows']['distilled']['auroc']:.2f})")
    if ev:
        rows = _vs_teacher(ev)
        less = [r["family"] for r in rows if r["sign"] > 0]
        lines.append(f"{len(less)} of {len(rows)} families (eval.json, several seeds) with a distilled student less "
                     f"calibrated than its teacher{' (' + ', '.join(less) + ')' if less else ''}; the reading says "
                     f"distilled students generally are")
    return Bullets("\n".join(lines))
