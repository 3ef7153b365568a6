"""Chapter 03's experiments (token-level distillation of GPT-2-style models).

- the one-dimensional picture of forward vs reverse KL: a bimodal "teacher" distribution
  on a grid and a unimodal (Gaussian) "student" fitted to it with ``losses.generalized_jsd``
  (beta = 0: forward KL, mode-covering; beta = 1: reverse KL, mode-seeking);
- the student comparisons (scratch, pretrained then fine-tuned, distilled, pretrained then
  distilled), the temperature and top-k sweeps, sized by a ``GptBudget``;
- the cost of storing logits, and the gap analysis by token frequency.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import torch

from ..core import config, losses, metrics, models, text, train_text
from ..core.tables import Bullets

GRID = torch.linspace(-5.0, 5.0, 201)  # the "vocabulary" of the 1-D picture


def bimodal_logits(grid: torch.Tensor = GRID, modes=(-2.0, 2.0), width: float = 0.6,
                   weights=(0.5, 0.5)) -> torch.Tensor:
    """Log-density (up to a constant) of a two-Gaussian mixture on ``grid``: the teacher."""
    if len(weights) != len(modes) or not all(x > 0 for x in weights):
        raise ValueError(f"weights must be positive, one per mode ({len(modes)}), got {tuple(weights)}")
    if not width > 0:
        raise ValueError(f"width must be > 0, got {width}")
    w = torch.tensor(weights, dtype=torch.float32)
    comps = torch.stack([-(grid - m) ** 2 / (2 * width ** 2) for m in modes])     # (2, G)
    return torch.logsumexp(comps + w.log()[:, None], dim=0)                       # (G,)


def gaussian_logits(mu: torch.Tensor, log_sigma: torch.Tensor, grid: torch.Tensor = GRID) -> torch.Tensor:
    """Log-density (up to a constant) of N(mu, sigma²) on ``grid``: the student."""
    return -(grid - mu) ** 2 / (2 * torch.exp(log_sigma) ** 2)


def fit_gaussian(teacher_logits: torch.Tensor, beta: float, *, steps: int = 400, lr: float = 0.05,
                 init=(1.0, -0.6931), grid: torch.Tensor = GRID) -> dict:
    """Fit N(mu, sigma²) to the teacher by minimising ``generalized_jsd(student, teacher, beta)``.

    beta = 0 is forward KL(p_T || q): the student must cover both modes, so it
    sits between them with a wide sigma. beta = 1 is reverse KL(q || p_T): the
    student is punished for mass where the teacher has none, so it picks one mode.
    ``init`` is the starting (mu, log sigma), by default mu = 1, sigma = 0.5: a little
    nearer the right-hand mode, so that mode-seeking objectives have one to find.
    Returns mu, sigma, the final loss and both KLs.
    """
    mu = torch.tensor(float(init[0]), requires_grad=True)
    log_sigma = torch.tensor(float(init[1]), requires_grad=True)
    opt = torch.optim.Adam([mu, log_sigma], lr=lr)
    for _ in range(steps):
        loss = losses.generalized_jsd(gaussian_logits(mu, log_sigma, grid)[None], teacher_logits[None], beta)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        q = gaussian_logits(mu, log_sigma, grid)[None]
        p = teacher_logits[None]
        return {"beta": float(beta), "mu": float(mu), "sigma": float(torch.exp(log_sigma)),
                "loss": float(losses.generalized_jsd(q, p, beta)),
                "forward_kl": float(losses.forward_kl(q, p)), "reverse_kl": float(losses.reverse_kl(q, p)),
                "student_probs": torch.softmax(q[0], -1), "teacher_probs": torch.softmax(p[0], -1)}


def mode_mass(probs: torch.Tensor, grid: torch.Tensor = GRID, gap: float = 1.0) -> float:
    """Probability the distribution puts between the modes (|x| < gap): covering puts a lot there."""
    return float(probs[grid.abs() < gap].sum())


# ------------------------------------------------------------- the cost of logits

def logit_storage(vocab_size: int, ks=(1, 5, 20, 100), *, tokens: int = 1_000_000) -> list[dict]:
    """Bytes to store a teacher's logits for offline distillation, per token and for ``tokens`` tokens.

    Full logits in fp16: ``2·V`` bytes per token. Top-k: ``k`` fp16 values plus ``k`` indices
    (uint16 while ``V <= 65,536``, else int32): ``k·(2 + 2 or 4)`` bytes. Returns one row per
    format: ``{"format", "bytes_per_token", "gb_for_tokens", "fraction_of_full"}``.
    """
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 2:
        raise ValueError(f"vocab_size must be an integer >= 2, got {vocab_size!r}")
    bad = [k for k in ks if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= vocab_size]
    if bad:
        raise ValueError(f"each k must be an integer in [1, vocab_size={vocab_size}], got {bad}")
    full = 2 * vocab_size
    index_bytes = 2 if vocab_size <= 65_536 else 4
    rows = [("full logits (fp16)", full)] + [(f"top-{k} (fp16 value + index)", k * (2 + index_bytes)) for k in ks]
    return [{"format": name, "bytes_per_token": b, "gb_for_tokens": b * tokens / 1e9, "fraction_of_full": b / full}
            for name, b in rows]


# ------------------------------------------------------------------ gap analysis

FREQUENCY_BUCKETS = ((0, 100, "top 100 tokens"), (100, 1000, "ranks 100-999"), (1000, None, "rank 1000 and rarer"))


def frequency_gap(losses_by_model: dict[str, dict], ranks: torch.Tensor) -> list[list]:
    """Mean next-token loss (nats) of each model per frequency bucket of the *target* token:
    rows ``[bucket, n positions, loss of model 1, loss of model 2, ...]`` (from ``metrics.token_nll``;
    ``ranks`` from ``text.token_ranks``)."""
    first = next(iter(losses_by_model.values()))
    target_rank = ranks[first["target"]]
    rows = []
    for lo, hi, name in FREQUENCY_BUCKETS:
        pick = (target_rank >= lo) & (target_rank < hi if hi is not None else True)
        rows.append([name, int(pick.sum())] + [float(r["nll"][pick].mean()) if pick.any() else float("nan")
                                                for r in losses_by_model.values()])
    return rows


def shortfall_tokens(teacher: dict, student: dict, tokenizer, *, min_count: int = 20, top: int = 10) -> list[list]:
    """The target tokens where the student's mean loss exceeds the teacher's most (seen >= ``min_count``
    times): rows ``[token, count, teacher nats, student nats, gap]``."""
    if not torch.equal(teacher["target"], student["target"]):
        raise ValueError("teacher and student must be scored on the same blocks")
    ids = teacher["target"]
    v = int(ids.max()) + 1
    count = torch.bincount(ids, minlength=v).float()
    mean = lambda nll: torch.bincount(ids, weights=nll, minlength=v) / count.clamp_min(1)
    t, s = mean(teacher["nll"]), mean(student["nll"])
    gap = torch.where(count >= min_count, s - t, torch.full_like(t, float("-inf")))
    order = gap.argsort(descending=True)[:top]
    return [[tokenizer.decode([int(i)]), int(count[i]), float(t[i]), float(s[i]), float(gap[i])]
            for i in order if torch.isfinite(gap[i])]


# -------------------------------------------------------- students on Shakespeare

def load() -> tuple:
    """The shipped teacher (``gpt2-tiny``) and the byte-level BPE tokenizer it shares with its students."""
    return models.load_teacher("gpt2-tiny", device="cpu"), text.load_tokenizer("bpe")


@dataclass
class GptBudget:
    layers: int = 2               # the student (the shipped teacher: 6 x 256)
    hidden: int = 128
    heads: int = 2
    block: int = 128
    n_train_blocks: int | None = None   # None: every Shakespeare training block (~11k of 128 tokens)
    n_val_blocks: int = 200
    steps: int = 300              # 300 x 16 blocks = 0.6M tokens, under half an epoch: sized so the
    batch_size: int = 16          # notebook's four students train in about 5 minutes on 2 CPU cores
    lr: float = 1e-3              # at 2e-3 a pure-KD student from random weights sometimes derails
    temperature: float = 1.0
    alpha: float = 0.0            # weight of the hard next-token loss in distillation


def budget(**overrides) -> GptBudget:
    """The classroom budget, or a tiny one in quick mode."""
    quick = GptBudget(layers=1, hidden=32, block=32, n_train_blocks=64, n_val_blocks=8, steps=2, batch_size=4)
    return replace(config.budget(GptBudget(), quick), **overrides)


def notebook_budget(**overrides) -> GptBudget:
    """The notebook's live budget: the bench's steps in batches half as large, so half its tokens.
    A distillation step at 16 blocks peaks at ~250 MB for its (B, S, 4096) logits alone; at 8
    the notebook stays under Binder's memory (kdlab bench notebooks measures it). With the bench's
    tokens (twice these steps) notebook 03 took 758 s on a 2-core CPU without bf16, over the ten minutes."""
    b = budget(**overrides)
    return b if config.QUICK else replace(b, batch_size=max(1, b.batch_size // 2))


def shakespeare_blocks(tok, split: str, b: GptBudget) -> torch.Tensor:
    """Shakespeare token blocks ``(N, b.block)`` of a split (the first N of them)."""
    n = b.n_train_blocks if split == "train" else b.n_val_blocks
    blocks = text.token_blocks(text.load_corpus("shakespeare", split), tok, b.block)
    return blocks[:n] if n else blocks


def token_config(b: GptBudget, seed: int = 0, **kw) -> train_text.TokenKDConfig:
    settings = dict(steps=b.steps, batch_size=b.batch_size, lr=b.lr, temperature=b.temperature,
                    alpha=b.alpha, seed=seed, log_every=max(1, b.steps // 20))
    return train_text.TokenKDConfig(**{**settings, **kw})


def train_student(kind: str, teacher, init, train_blocks, b: GptBudget, seed: int = 0, progress: bool = True,
                  **kd) -> tuple:
    """One student on Shakespeare: ``kind`` is "scratch" / "fine-tuned" (hard labels) or "distilled"
    (token-level KD from ``teacher``); ``init`` is None (random weights) or a model to start from
    (copied). Returns ``(student, history)``."""
    import copy
    student = copy.deepcopy(init).train() if init is not None else new_student_like(teacher, b, seed)
    if kind in ("scratch", "fine-tuned"):
        history = train_text.fit_clm(student, train_blocks, token_config(b, seed), progress=progress, desc=kind)
    elif kind == "distilled":
        history = train_text.distill_clm(student, teacher, train_blocks, token_config(b, seed, **kd),
                                         progress=progress, desc="distil")
    else:
        raise ValueError(f"kind must be 'scratch', 'fine-tuned' or 'distilled', got {kind!r}")
    return student.eval(), history


def new_student_like(teacher, b: GptBudget, seed: int = 0):
    """A random student sharing the teacher's vocabulary and special tokens."""
    config.seed_everything(seed)
    return models.gpt2_lm(teacher.config.vocab_size, layers=b.layers, hidden=b.hidden, heads=b.heads,
                          max_len=b.block, eos_token_id=teacher.config.eos_token_id)


VARIANTS = {  # name -> (kind, start from the wiki-pretrained student?)
    "scratch (hard labels)": ("scratch", False),
    "pretrained on wiki, fine-tuned (hard labels)": ("fine-tuned", True),
    "distilled (forward KL)": ("distilled", False),
    "pretrained on wiki, then distilled": ("distilled", True),
}


def compare_students(teacher, pretrained, train_blocks, val_blocks, b: GptBudget, seed: int = 0,
                     progress: bool = True) -> dict:
    """The chapter's question: held-out perplexity of each ``VARIANTS`` student at one budget.
    Returns ``{name: {"perplexity", "history" (records), "student" (the trained model)}}``."""
    out = {}
    for name, (kind, from_wiki) in VARIANTS.items():
        student, history = train_student(kind, teacher, pretrained if from_wiki else None, train_blocks, b,
                                         seed, progress)
        out[name] = {"perplexity": metrics.perplexity(student, val_blocks), "history": history.records,
                     "student": student}
    return out


# ------------------------------------------- the book's exercise 1, run by the reader

EXERCISE_ARMS = ("scratch", "fine-tuned", "distilled")   # the book's three students
BOTH = "pretrained, then distilled"                      # the optional fourth
ARM_VARIANT = dict(zip((*EXERCISE_ARMS, BOTH), VARIANTS))  # arm -> compare_students' name for it


def exercise_budget(**overrides) -> GptBudget:
    """Notebook 03's book exercise 1: the notebook's budget for half its steps, so that three students train
    in about two and a half minutes on two cores (quick mode: the quick budget)."""
    b = notebook_budget(**overrides)
    return b if config.QUICK else replace(b, steps=b.steps // 2)


def student_maker(teacher, b: GptBudget, seed: int = 0):
    """``make_student()`` -> a fresh random student (``new_student_like``), the same weights at every call;
    it carries ``kd_start = ("random", seed)``."""
    def make_student():
        model = new_student_like(teacher, b, seed)
        model.kd_start = ("random", seed)
        return model
    return make_student


def pretrained_maker(pretrained):
    """``load_pretrained()`` -> a fresh copy of ``pretrained`` (``gpt2-wiki-student``) in train mode, carrying
    ``kd_start = ("pretrained", its sha256)``."""
    import copy
    tag = ("pretrained", getattr(pretrained, "card", {}).get("sha256"))

    def load_pretrained():
        model = copy.deepcopy(pretrained).train()
        model.kd_start = tag
        return model
    return load_pretrained


def trainers(teacher, train_blocks, b: GptBudget, seed: int = 0, progress: bool = True) -> tuple:
    """``(train_on_text, distill)`` for the exercise, each ``f(model) -> model`` for ``b.steps`` steps on the
    batches of ``seed`` (as ``train_student`` trains): next-token cross-entropy on the human-written blocks, or
    token-level KD from ``teacher`` (forward KL at ``b.temperature``). Each stamps the model with a ``kd_record``
    (its teacher or None, steps, batch, seed, start, history) that ``exercises.check_alternatives`` reads."""
    def stamp(model, teacher_, history):
        model.kd_record = {"teacher": teacher_, "steps": b.steps, "batch_size": b.batch_size, "seed": seed,
                           "start": getattr(model, "kd_start", None), "history": history.records,
                           "trained_before": hasattr(model, "kd_record")}
        return model.eval()

    def train_on_text(model):
        return stamp(model, None, train_text.fit_clm(model.train(), train_blocks, token_config(b, seed),
                                                     progress=progress, desc="next token"))

    def distill(model):
        return stamp(model, teacher, train_text.distill_clm(model.train(), teacher, train_blocks,
                                                            token_config(b, seed), progress=progress, desc="distil"))
    return train_on_text, distill


def alternatives_loop(make_student, load_pretrained, train_on_text, distill, *, both: bool = False) -> dict:
    """The book's exercise 1 as the exercise asks for it: ``{"scratch": train_on_text(make_student()),
    "fine-tuned": train_on_text(load_pretrained()), "distilled": distill(make_student())}`` (``both``: and
    ``"pretrained, then distilled": distill(load_pretrained())``)."""
    out = {"scratch": train_on_text(make_student()), "fine-tuned": train_on_text(load_pretrained()),
           "distilled": distill(make_student())}
    if both:
        out[BOTH] = distill(load_pretrained())
    return out


def val_split(b: GptBudget) -> torch.Tensor:
    """The held-out Shakespeare blocks of budget ``b`` (what notebook 03's ``val_blocks`` holds)."""
    return shakespeare_blocks(text.load_tokenizer("bpe"), "val", b)


def _exercise_runs(seeds) -> tuple:
    """``(seeds as a list, exercise_budget(), its training blocks, its held-out blocks)`` for a five-seed check."""
    seeds, b = list(seeds), exercise_budget()
    if not seeds:
        raise ValueError("seeds must list at least one seed, e.g. range(5)")
    tok = text.load_tokenizer("bpe")
    return seeds, b, shakespeare_blocks(tok, "train", b), shakespeare_blocks(tok, "val", b)


def alternatives_check(teacher, pretrained, seeds=range(5), progress: bool = False) -> dict:
    """The exercise's experiment (``compare_students`` at ``exercise_budget``, all four students) over
    ``seeds``: held-out perplexity per student and seed, their mean and spread, and on how many seeds the
    distilled student beat the one from scratch and the fine-tuned one."""
    seeds, b, train_blocks, val_blocks = _exercise_runs(seeds)
    per_seed = []
    for s in seeds:
        runs = compare_students(teacher, pretrained, train_blocks, val_blocks, b, s, progress)
        per_seed.append({arm: runs[name]["perplexity"] for arm, name in ARM_VARIANT.items()})
    col = lambda arm: [r[arm] for r in per_seed]
    return {"budget": asdict(b), "seeds": seeds, "per_seed": per_seed,
            "perplexity": {arm: metrics.mean_std(col(arm)) for arm in ARM_VARIANT},
            "distilled_beats": {arm: sum(r["distilled"] < r[arm] for r in per_seed) for arm in ("scratch",
                                                                                                  "fine-tuned")}}


def training_nll(history: dict | list) -> list[float]:
    """The next-token cross-entropy on the training batches from a run's records: ``loss`` for a
    hard-label run, its logged ``hard`` term for a distilled one (logged even when alpha = 0), so
    the curves of every variant are comparable."""
    records = history["history"] if isinstance(history, dict) else history
    return [r["hard"] if "hard" in r else r["loss"] for r in records]


def sweep_students(teacher, train_blocks, val_blocks, b: GptBudget, settings: dict, seed: int = 0,
                   progress: bool = True) -> dict:
    """Held-out perplexity of one distilled student per named setting (``TokenKDConfig`` fields, e.g.
    ``{"T = 4": {"temperature": 4.0}}``), all from the same random start and trained in lockstep on the
    same batches: one teacher forward per step serves them all (``train_text.distill_clm_many``)."""
    students = {name: new_student_like(teacher, b, seed) for name in settings}
    cfgs = {name: token_config(b, seed, **kw) for name, kw in settings.items()}
    train_text.distill_clm_many(students, teacher, train_blocks, cfgs, progress=progress)
    return {name: metrics.perplexity(student, val_blocks) for name, student in students.items()}


def temperature_sweep(teacher, train_blocks, val_blocks, b: GptBudget, temperatures=(1, 2, 4, 10, 20),
                      seed: int = 0, progress: bool = True) -> dict:
    """Held-out perplexity of a distilled student (random start) at each temperature, ``{T: ppl}``."""
    ppl = sweep_students(teacher, train_blocks, val_blocks, b, {float(t): {"temperature": float(t)}
                                                                 for t in temperatures}, seed, progress)
    return {float(t): v for t, v in ppl.items()}


def topk_sweep(teacher, train_blocks, val_blocks, b: GptBudget, ks=(1, 5, 20, 100), seed: int = 0,
               progress: bool = True) -> dict:
    """Held-out perplexity of a student distilled from the teacher's top-k logits only, ``{k: ppl}``."""
    return sweep_students(teacher, train_blocks, val_blocks, b, {int(k): {"top_k": int(k)} for k in ks},
                          seed, progress)


# ------------------------------------------- beyond matching logits (sequence-level, on-policy)

BEYOND = {  # name -> what the student learns from, each over the same N = steps x batch blocks
    "human-written text (hard labels)": "human",
    "teacher-written text (sequence-level KD)": "sequence",
    "token-level KD (forward KL)": "token",
    "on-policy KD (GKD: student writes, reverse KL)": "on-policy",
    "on-policy KD, half real text (forward KL)": "mixed",
}


def human_subset(train_blocks: torch.Tensor, b: GptBudget, seed: int = 0) -> torch.Tensor:
    """``steps x batch_size`` training blocks drawn without replacement (seeded): N human-written
    blocks, each seen once by a student trained for ``b.steps`` steps."""
    n = b.steps * b.batch_size
    if n > len(train_blocks):
        raise ValueError(f"the budget needs {n} blocks but there are only {len(train_blocks)}")
    order = torch.randperm(len(train_blocks), generator=torch.Generator().manual_seed(seed))
    return train_blocks[order[:n]]


def beyond_logits(teacher, train_blocks, val_blocks, b: GptBudget, seed: int = 0, *, teacher_text=None,
                  progress: bool = True) -> dict:
    """Sequence-level and on-policy KD beside token-level KD and plain training, at one budget.

    Every student starts from the same random weights and takes ``b.steps`` steps of
    ``b.batch_size`` blocks: N human-written blocks (``human_subset``) or N blocks the teacher wrote
    (``teacher_text``, made by ``train_text.teacher_corpus`` if None). The on-policy students see the
    student's own continuations of the first 8 tokens of the human blocks. Returns ``{name:
    {"perplexity", "seconds", "history"}}`` plus ``"teacher writing seconds"``.
    """
    import time
    human = human_subset(train_blocks, b, seed)
    start = time.perf_counter()
    if teacher_text is None:
        teacher_text = train_text.teacher_corpus(teacher, len(human), b.block, teacher.config.eos_token_id,
                                                 seed=seed, progress=progress)
    out = {"teacher writing seconds": time.perf_counter() - start}
    for name, kind in BEYOND.items():
        student, start = new_student_like(teacher, b, seed), time.perf_counter()
        if kind in ("human", "sequence"):
            history = train_text.fit_clm(student, human if kind == "human" else teacher_text,
                                         token_config(b, seed), progress=progress, desc=kind)
        elif kind == "token":
            history = train_text.distill_clm(student, teacher, human, token_config(b, seed), progress=progress)
        else:
            settings = dict(loss="reverse", on_policy=1.0) if kind == "on-policy" else dict(loss="forward",
                                                                                           on_policy=0.5)
            cfg = train_text.OnPolicyConfig(**{**asdict(token_config(b, seed)), **settings})
            history = train_text.distill_on_policy(student, teacher, human, cfg, progress=progress, desc=kind)
        out[name] = {"perplexity": metrics.perplexity(student.eval(), val_blocks),
                     "seconds": time.perf_counter() - start, "history": history.records}
    return out


# ------------------------------------------- the book's exercise 2 (notebook 03b), run by the reader

WRITTEN_ARMS = ("human-written", "teacher-written")
_TEACHER_WRITTEN: set = set()   # fingerprints of the corpora ``teacher_text`` made in this process


def fingerprint(blocks: torch.Tensor) -> tuple:
    """A cheap identity of a token-block tensor: its shape and two sums of its ids."""
    ids = blocks.long()
    return (*ids.shape, int(ids.sum()), int((ids * torch.arange(1, ids.shape[-1] + 1)).sum()))


def teacher_text(teacher, b: GptBudget, seed: int = 0, progress: bool = True) -> torch.Tensor:
    """The book's exercise 2's teacher-written data: ``b.steps x b.batch_size`` blocks sampled from ``teacher``
    at T = 1 (``train_text.teacher_corpus``), as many as ``human_subset`` draws of the plays."""
    blocks = train_text.teacher_corpus(teacher, b.steps * b.batch_size, b.block, teacher.config.eos_token_id,
                                       seed=seed, progress=progress)
    _TEACHER_WRITTEN.add(fingerprint(blocks))
    return blocks


def is_teacher_written(blocks_fingerprint: tuple) -> bool:
    return tuple(blocks_fingerprint) in _TEACHER_WRITTEN


def text_trainer(b: GptBudget, seed: int = 0, progress: bool = True):
    """``train_on(model, blocks) -> model``: ``b.steps`` steps of next-token cross-entropy on batches of
    ``blocks`` (those of ``seed``), the model stamped with a ``kd_record`` (the blocks' fingerprint and size,
    steps, batch, seed, start) that ``exercises.check_written`` reads."""
    def train_on(model, blocks):
        history = train_text.fit_clm(model.train(), blocks, token_config(b, seed), progress=progress, desc="text")
        model.kd_record = {"blocks": fingerprint(blocks), "n_blocks": len(blocks), "steps": b.steps,
                           "batch_size": b.batch_size, "seed": seed, "start": getattr(model, "kd_start", None),
                           "history": history.records, "trained_before": hasattr(model, "kd_record")}
        return model.eval()
    return train_on


def written_check(teacher, seeds=range(5), progress: bool = False) -> dict:
    """Notebook 03b's book exercise 2 over ``seeds``, at ``exercise_budget``: a random student on N
    human-written blocks (``human_subset``) and the same start on N blocks the teacher wrote
    (``teacher_text``), the same steps; held-out perplexity per seed, and on how many seeds teacher-written text
    won."""
    seeds, b, train_blocks, val_blocks = _exercise_runs(seeds)
    per_seed = []
    for s in seeds:
        make, train_on = student_maker(teacher, b, s), text_trainer(b, s, progress)
        data = {"human-written": human_subset(train_blocks, b, s), "teacher-written": teacher_text(teacher, b, s,
                                                                                                   progress)}
        per_seed.append({arm: metrics.perplexity(train_on(make(), blocks), val_blocks) for arm, blocks in data.items()})
    return {"budget": asdict(b), "seeds": seeds, "n_blocks": b.steps * b.batch_size, "per_seed": per_seed,
            "perplexity": {arm: metrics.mean_std([r[arm] for r in per_seed]) for arm in WRITTEN_ARMS},
            "teacher_written_wins": sum(r["teacher-written"] < r["human-written"] for r in per_seed)}


@torch.no_grad()
def samples_side_by_side(lms: dict, prompt: torch.Tensor, length: int, *, seed: int = 0) -> dict:
    """What each model writes after the same ``prompt`` ``(1, P)``, sampled with the same seed,
    and the mean loss (nats per token) the first model (the teacher) gives each sample:
    ``{name: {"ids": (length,), "teacher_nll": float}}``. The teacher scoring a student's text is
    what on-policy KD does at every step."""
    judge = next(iter(lms.values()))
    out = {}
    for name, lm in lms.items():
        config.seed_everything(seed)
        ids = train_text.sample_blocks(lm, prompt, length)                             # (1, length)
        logits = judge(input_ids=ids.to(train_text._device(judge))).logits.float().cpu()  # (1, length, V)
        p = prompt.shape[1]
        nll = torch.nn.functional.cross_entropy(logits[0, p - 1:-1], ids[0, p:])
        out[name] = {"ids": ids[0], "teacher_nll": float(nll)}
    return out


@torch.no_grad()
def surprising_tokens(judge, ids: torch.Tensor, tokenizer, prompt_length: int, *, top: int = 8) -> list[list]:
    """The tokens of a sample ``ids`` ``(S,)`` that ``judge`` (the teacher) finds least likely, after
    the prompt: rows ``[position, the 4 tokens before it, token, judge's probability]``. On-policy KD
    hands exactly these per-token judgements (whole distributions, in fact) back to the student."""
    if not 1 <= prompt_length < len(ids):
        raise ValueError(f"prompt_length must be in [1, {len(ids) - 1}], got {prompt_length}")
    logp = judge(input_ids=ids[None].to(train_text._device(judge))).logits.float().cpu().log_softmax(-1)[0]
    p = logp[:-1].gather(-1, ids[1:, None])[:, 0].exp()          # (S-1,): probability of token t+1
    p[:prompt_length - 1] = float("inf")                            # never rank the prompt itself
    shown = lambda piece: tokenizer.decode(piece).replace("\n", "\\n")   # line breaks stay visible in a table
    return [[t + 1, shown(ids[max(0, t - 3):t + 1]), shown(ids[t + 1:t + 2]), float(p[t])]
            for t in p.argsort()[:min(top, len(ids) - prompt_length)].tolist()]


# ------------------------------------------------------------------ verdicts

def _vs(compare: dict, a: str, b: str) -> str:
    """"lower than" / "higher than" / "within the noise of": ``a``'s mean perplexity against ``b``'s, by
    chapter 01's two-standard-deviation rule."""
    if not metrics.beyond_noise(compare[a], compare[b]):
        return "within the noise of"
    return "lower than" if compare[a]["mean"] < compare[b]["mean"] else "higher than"


def gpt_verdict(compare: dict) -> str:
    """Chapter 03's targets read against the measured mean perplexities (lower is better), each comparison
    by the two-standard-deviation rule."""
    ppl = {name: r["mean"] for name, r in compare.items()}
    scratch, tuned = "scratch (hard labels)", "pretrained on wiki, fine-tuned (hard labels)"
    kd, both = "distilled (forward KL)", "pretrained on wiki, then distilled"
    cut = 1 - ppl[kd] / ppl[scratch]
    met = cut >= 0.15 and _vs(compare, kd, scratch) == "lower than"
    return Bullets("\n".join([
        f"distilled vs scratch: {ppl[kd]:.1f} vs {ppl[scratch]:.1f} perplexity, {cut:.0%} lower "
        f"(target: at least 15% lower, beyond the noise): {'met' if met else 'NOT met'}",
        f"pretrained-then-distilled {ppl[both]:.1f}: {_vs(compare, both, scratch)} scratch ({ppl[scratch]:.1f}), "
        f"{_vs(compare, both, tuned)} fine-tuned ({ppl[tuned]:.1f})"]))


def alternatives_verdict(check: dict) -> Bullets:
    """The book's exercise 1 over the seeds of ``alternatives_check``: the distilled student against scratch
    and fine-tuned, seed by seed and by the two-standard-deviation rule."""
    p, n, wins = check["perplexity"], len(check["seeds"]), check["distilled_beats"]
    return Bullets("\n".join(
        f"distilled {p['distilled']['mean']:.1f} against {arm} {p[arm]['mean']:.1f}: lower on {wins[arm]} of {n} "
        f"seeds; the mean is {_vs(p, 'distilled', arm)} {arm}'s" for arm in ("scratch", "fine-tuned")))


def written_verdict(check: dict) -> Bullets:
    """The book's exercise 2 over the seeds of ``written_check``, seed by seed and by the two-standard-deviation
    rule."""
    p, n = check["perplexity"], len(check["seeds"])
    return Bullets(f"teacher-written {p['teacher-written']['mean']:.1f} against human-written "
                   f"{p['human-written']['mean']:.1f} ({check['n_blocks']:,} blocks each): lower on "
                   f"{check['teacher_written_wins']} of {n} seeds; the mean is "
                   f"{_vs(p, 'teacher-written', 'human-written')} human-written's")


def beyond_verdict(compare: dict) -> str:
    """How sequence-level and on-policy KD rank against token-level KD and human text, in words, each
    comparison by the two-standard-deviation rule."""
    m = {name: r["mean"] for name, r in compare.items()}
    human, seq, token = ("human-written text (hard labels)", "teacher-written text (sequence-level KD)",
                         "token-level KD (forward KL)")
    best = min(m, key=m.get)
    return Bullets(f"teacher-written text: {m[seq]:.1f} perplexity, {_vs(compare, seq, human)} the same number of "
                   f"human-written tokens ({m[human]:.1f})\n"
                   f"token-level KD: {m[token]:.1f}, {_vs(compare, token, human)} human-written text\n"
                   f"lowest mean: {best} ({m[best]:.1f})")
