"""Training and distillation loops for the text chapters (masked LM, sentiment, causal LMs).

``token_kd_step`` is the lab's reference token-level distillation step, readable in one go:
teacher logits without gradients, ``alpha · CE + (1 - alpha) · T² · D(p_T, p_S)`` over the
positions that count (``token_kd_terms``), zero_grad / backward / step; ``distill_clm`` runs it
for ``cfg.steps`` batches. ``triple_loss_step`` is DistilBERT's step in the same form, and
``distill_mlm`` runs it. All loops are step-based (``TextConfig.steps``) with AdamW (in bf16
autocast where the hardware supports it, see ``config.bf16_supported``), a linear warm-up
and decay (``transformers.get_linear_schedule_with_warmup``), gradient
clipping, seeded batches and masking, a progress line (``progress``), and a ``History``
whose records (every ``log_every`` steps) hold each loss term separately.
"""
from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from . import checks, config, losses
from .progress import progress as progress_line
from .text import mask_tokens
from .train import History


@dataclass
class TextConfig:
    steps: int = 300
    batch_size: int = 32
    lr: float = 5e-4             # DistilBERT: 5e-4 (with batches of ~4k sequences)
    weight_decay: float = 0.01
    warmup: float = 0.05         # share of the steps with a linear warm-up (DistilBERT: 5%)
    max_grad_norm: float = 5.0   # DistilBERT clipped at 5.0
    mlm_probability: float = 0.15  # BERT and DistilBERT mask 15% of the tokens
    seed: int = 0
    log_every: int = 10


@dataclass
class TripleLossConfig(TextConfig):
    temperature: float = 2.0     # DistilBERT used T = 2
    w_soft: float = 5.0          # alpha_ce in the DistilBERT README's example command
    w_mlm: float = 2.0           # alpha_mlm
    w_cos: float = 1.0           # alpha_cos


@dataclass
class ClassifierKDConfig(TextConfig):
    lr: float = 1e-4             # fine-tuning rate (BERT: 2e-5 to 5e-5 at base size)
    temperature: float = 2.0
    alpha: float = 0.5           # weight of the hard labels in distillation_loss
    w_cos: float = 0.0           # weight of the [CLS] hidden-state cosine (MiniLM section)


def _optimizer(model, cfg: TextConfig):
    """AdamW with a linear warm-up and decay over ``cfg.steps``: ``(params, optimizer, scheduler)``."""
    from transformers import get_linear_schedule_with_warmup
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return params, opt, get_linear_schedule_with_warmup(opt, int(cfg.warmup * cfg.steps), cfg.steps)


def _update(loss: torch.Tensor, params, opt, sched, cfg: TextConfig, step: int) -> None:
    """One optimiser step on ``loss``, refusing a non-finite loss with advice."""
    if not torch.isfinite(loss):
        raise FloatingPointError(f"the loss became {float(loss.detach())} at step {step}: "
                                 f"lower the learning rate (now {cfg.lr:g})")
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
    opt.step()
    sched.step()


def _batches(n_examples: int, cfg: TextConfig, gen: torch.Generator):
    """Yield ``(step, indices)`` for ``cfg.steps`` steps: seeded epochs of shuffled examples."""
    if cfg.steps < 1 or cfg.batch_size < 1:
        raise ValueError(f"steps and batch_size must be >= 1, got {cfg.steps}, {cfg.batch_size}")
    if n_examples < 1:
        raise ValueError("there is no training example")
    order, pos = torch.randperm(n_examples, generator=gen), 0
    for step in range(1, cfg.steps + 1):
        if pos + cfg.batch_size > n_examples and pos > 0:
            order, pos = torch.randperm(n_examples, generator=gen), 0
        yield step, order[pos:pos + cfg.batch_size]
        pos += cfg.batch_size


def _log(history: History, out: dict, step: int, cfg: TextConfig, start: float) -> None:
    if step % cfg.log_every == 0 or step == cfg.steps:
        history.records.append({"step": step, **{k: float(torch.as_tensor(v).detach()) for k, v in out.items()},
                                "seconds": time.perf_counter() - start})


def _setup(model, cfg: TextConfig):
    """What every loop starts with: ``(seeded generator, optimizer, scheduler, history, start time)``."""
    gen = config.seed_everything(cfg.seed)
    _params, opt, sched = _optimizer(model, cfg)
    return gen, opt, sched, History(settings=asdict(cfg)), time.perf_counter()


def _finish(model, history: History) -> History:
    """Eval mode, and the batches' freed buffers handed back to the system (not to the next model)."""
    model.eval()
    config.trim_heap()
    return history


def _steps(model, n_examples: int, cfg: TextConfig, step_loss, progress: bool, desc: str) -> History:
    """The shared loop: ``step_loss(idx, generator) -> {"loss": ..., other terms}`` under autocast, then
    one clipped optimiser step on ``loss``."""
    gen, opt, sched, history, start = _setup(model, cfg)
    dev, params = _device(model), [p for p in model.parameters() if p.requires_grad]
    model.train()
    for step, idx in progress_line(_batches(n_examples, cfg, gen), total=cfg.steps, desc=desc,
                                   enabled=progress):
        with config.autocast(dev):  # bf16 where the hardware has it (see config.bf16_supported)
            out = step_loss(idx, gen)
        _update(out["loss"], params, opt, sched, cfg, step)
        _log(history, out, step, cfg, start)
    del opt, sched   # Adam's moments, before the heap is trimmed
    return _finish(model, history)


def _device(model) -> torch.device:
    return next(model.parameters()).device


def fit_mlm(model, blocks: torch.Tensor, tokenizer, cfg: TextConfig | None = None, *,
            progress: bool = True, desc: str = "mlm") -> History:
    """Masked-language-model training on token ``blocks`` ``(N, S)``."""
    cfg = cfg or TextConfig()
    dev = _device(model)

    def step_loss(idx, gen):
        inputs, labels = mask_tokens(blocks[idx], tokenizer, cfg.mlm_probability, gen)
        return {"loss": model(input_ids=inputs.to(dev), labels=labels.to(dev)).loss}

    return _steps(model, len(blocks), cfg, step_loss, progress, desc)


def _step_student(student, optimizer, loss: torch.Tensor, max_grad_norm: float | None) -> None:
    """zero_grad, backward, (clip the student's gradients to ``max_grad_norm``), step; a loss that is not
    finite stops the run with a hint instead of corrupting the weights."""
    if not torch.isfinite(loss):
        raise FloatingPointError(f"the loss became {float(loss.detach())}: lower the learning rate")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if max_grad_norm:
        torch.nn.utils.clip_grad_norm_([p for p in student.parameters() if p.requires_grad], max_grad_norm)
    optimizer.step()


def triple_loss_step(student, teacher, batch: dict, optimizer, T: float, weights, *,
                     max_grad_norm: float | None = None, autocast: bool = False) -> dict:
    """One step of DistilBERT's triple loss (Sanh et al. 2019) on a masked ``batch``; returns its terms.

    ``batch`` holds ``input_ids`` ``(B, S)``, ``attention_mask`` ``(B, S)`` (1 at real tokens; None or
    absent: all count) and ``labels`` ``(B, S)`` (the original token where the input was masked, -100
    elsewhere); ``weights`` is ``(w_soft, w_mlm, w_cos)``::

        z_T, h_T = teacher(x)                 eval mode, no gradient (logits, last hidden states)
        z_S, h_S = student(x)                 train mode
        soft = T² · KL(p_T || p_S)            mean over the real tokens
        mlm  = CE(z_S, labels)                mean over the masked tokens, at T = 1
        cos  = 1 - cos(h_S, h_T)              mean over the real tokens
        loss = w_soft · soft + w_mlm · mlm + w_cos · cos
        zero_grad, backward, (clip to max_grad_norm), step

    Returns ``{"soft", "mlm", "cos", "loss"}`` as floats (``losses.multi_objective_loss`` computes them);
    ``autocast``: the forward passes in bf16 where the hardware has it (``config.autocast``).
    """
    w_soft, w_mlm, w_cos = weights
    teacher.eval()
    student.train()
    x, mask = batch["input_ids"], batch.get("attention_mask")                                   # (B, S), (B, S)
    precision = (lambda: config.autocast(_device(student))) if autocast else nullcontext
    with precision(), torch.no_grad():
        t = teacher(input_ids=x, attention_mask=mask, output_hidden_states=True)   # logits (B, S, V), hidden (B, S, H)
    with precision():
        s = student(input_ids=x, attention_mask=mask, output_hidden_states=True)   # the same shapes
        out = losses.multi_objective_loss(s.logits, t.logits, batch["labels"], s.hidden_states[-1],
                                          t.hidden_states[-1], attention_mask=mask, temperature=T,
                                          w_soft=w_soft, w_mlm=w_mlm, w_cos=w_cos)
    _step_student(student, optimizer, out["loss"], max_grad_norm)
    return {k: float(v.detach()) for k, v in out.items()}


def distill_mlm(student, teacher, blocks: torch.Tensor, tokenizer, cfg: TripleLossConfig | None = None,
                *, progress: bool = True, desc: str = "distil") -> History:
    """DistilBERT's triple loss on masked blocks: ``cfg.steps`` calls of ``triple_loss_step``,
    ``w_soft·T²·KL + w_mlm·MLM + w_cos·(1 - cos)``, AdamW with warm-up and linear decay, gradients
    clipped at ``cfg.max_grad_norm``.

    The teacher sees the same masked inputs (no gradient); the cosine compares
    the last hidden states, which needs equal hidden sizes.
    """
    cfg = cfg or TripleLossConfig()
    gen, opt, sched, history, start = _setup(student, cfg)
    dev, weights = _device(student), (cfg.w_soft, cfg.w_mlm, cfg.w_cos)
    for step, idx in progress_line(_batches(len(blocks), cfg, gen), total=cfg.steps, desc=desc, enabled=progress):
        inputs, labels = mask_tokens(blocks[idx], tokenizer, cfg.mlm_probability, gen)   # (B, S), (B, S)
        batch = {"input_ids": inputs.to(dev), "attention_mask": None, "labels": labels.to(dev)}
        terms = triple_loss_step(student, teacher, batch, opt, cfg.temperature, weights,
                                 max_grad_norm=cfg.max_grad_norm, autocast=True)
        sched.step()
        _log(history, terms, step, cfg, start)
    del opt, sched   # Adam's moments, before the heap is trimmed
    return _finish(student, history)


def fit_classifier(model, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor,
                   cfg: TextConfig | None = None, *, progress: bool = True, desc: str = "fine-tune") -> History:
    """Fine-tune a ``...ForSequenceClassification`` model with cross-entropy."""
    cfg = cfg or ClassifierKDConfig()
    dev = _device(model)

    def step_loss(idx, gen):
        out = model(input_ids=ids[idx].to(dev), attention_mask=mask[idx].to(dev))
        return {"loss": F.cross_entropy(out.logits, labels[idx].to(dev))}

    return _steps(model, len(labels), cfg, step_loss, progress, desc)


def distill_classifier(student, teacher, ids, mask, labels, cfg: ClassifierKDConfig | None = None, *,
                       progress: bool = True, desc: str = "distil") -> History:
    """``alpha·CE + (1-alpha)·T²·KL`` on the class logits, plus ``w_cos·(1 - cos)`` of the
    first ([CLS]) hidden state when ``w_cos > 0`` (soft CE + hard CE + hidden cosine)."""
    cfg = cfg or ClassifierKDConfig()
    teacher.eval()
    dev = _device(student)
    want_hidden = cfg.w_cos > 0

    def step_loss(idx, gen):
        x, m, y = ids[idx].to(dev), mask[idx].to(dev), labels[idx].to(dev)
        s = student(input_ids=x, attention_mask=m, output_hidden_states=want_hidden)
        with torch.no_grad():
            t = teacher(input_ids=x, attention_mask=m, output_hidden_states=want_hidden)
        out = {"soft": losses.kd_loss(s.logits, t.logits, cfg.temperature),
               "hard": F.cross_entropy(s.logits, y)}
        out["loss"] = cfg.alpha * out["hard"] + (1 - cfg.alpha) * out["soft"]
        if want_hidden:
            out["cos"] = losses.cosine_hidden_loss(s.hidden_states[-1][:, 0], t.hidden_states[-1][:, 0])
            out["loss"] = out["loss"] + cfg.w_cos * out["cos"]
        return out

    return _steps(student, len(labels), cfg, step_loss, progress, desc)


# ------------------------------------------------------ causal LMs (GPT-2 style)

@dataclass
class TokenKDConfig(TextConfig):
    lr: float = 2e-3             # tiny GPT-2 students trained best at 2e-3 here (unstable above 3e-3)
    temperature: float = 1.0
    alpha: float = 0.0           # weight of the hard next-token loss (0: pure distillation)
    loss: str = "forward"        # "forward" KL(p_T||p_S), "reverse" KL(p_S||p_T), or "jsd" (losses.DIVERGENCES)
    beta: float = 0.5            # generalized JSD's beta (GKD, Agarwal et al. 2024)
    top_k: int | None = None     # distil from the teacher's top-k logits only (offline caching)

    def kd(self) -> dict:
        """The loss settings of ``token_kd_terms`` / ``token_kd_step`` beside T and alpha."""
        return {"loss": self.loss, "beta": self.beta, "top_k": self.top_k}


def fit_clm(model, blocks: torch.Tensor, cfg: TextConfig | None = None, *, progress: bool = True,
            desc: str = "lm") -> History:
    """Next-token training on ``blocks`` ``(N, S)``: the model predicts token t+1 from tokens <= t."""
    cfg = cfg or TokenKDConfig()
    dev = _device(model)

    def step_loss(idx, gen):
        x = blocks[idx].to(dev)
        return {"loss": model(input_ids=x, labels=x).loss}

    return _steps(model, len(blocks), cfg, step_loss, progress, desc)


def token_kd_terms(student_logits, teacher_logits, input_ids, attention_mask=None, *, temperature: float = 1.0,
                   alpha: float = 0.0, loss: str = "forward", beta: float = 0.5, top_k: int | None = None) -> dict:
    """The token-level KD terms of a batch of blocks ``input_ids`` ``(B, S)``, logits ``(B, S, V)``.

    Position t predicts token t+1, so the last position is dropped, and a position counts where its
    target is a real token (``attention_mask[:, 1:]``; None: all of them)::

        hard = mean CE(z_S[:, t], x[:, t+1])                      the next-token loss, T = 1
        soft = T² · mean D(p_T, p_S)                              D of ``loss`` (losses.soft_loss), or the
                                                                  teacher's top-k only (losses.topk_kd_loss)
        loss = alpha · hard + (1 - alpha) · soft                  (soft alone when alpha = 0)
    """
    s_logits, t_logits, y = student_logits[:, :-1], teacher_logits[:, :-1], input_ids[:, 1:]   # (B, S-1, V), (B, S-1)
    mask = None if attention_mask is None else attention_mask[:, 1:].bool()                    # (B, S-1)
    with torch.set_grad_enabled(torch.is_grad_enabled() and alpha > 0):   # alpha = 0: logged only
        ce = F.cross_entropy(losses.at_least_fp32(s_logits).flatten(0, 1), y.flatten(),
                             reduction="none" if mask is not None else "mean")
        hard = ce if mask is None else losses.masked_mean(ce.view_as(y), mask)
    if top_k:
        values, indices = t_logits.topk(top_k, dim=-1)                                        # (B, S-1, k)
        soft = losses.topk_kd_loss(s_logits, values, indices, temperature, mask=mask)
    else:
        soft = losses.soft_loss(s_logits, t_logits, temperature, loss=loss, beta=beta, mask=mask)
    return {"soft": soft, "hard": hard, "loss": alpha * hard + (1 - alpha) * soft if alpha > 0 else soft}


def token_kd_step(student, teacher, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, optimizer,
                  T: float, alpha: float, *, loss: str = "forward", beta: float = 0.5, top_k: int | None = None,
                  max_grad_norm: float | None = None, autocast: bool = False, terms: dict | None = None) -> float:
    """One step of token-level distillation on blocks ``input_ids`` ``(B, S)``; returns the loss.

    ``attention_mask`` ``(B, S)`` is 1 at real tokens (None: every position counts)::

        z_T = teacher(x)                      eval mode, no gradient
        z_S = student(x)                      train mode
        loss = alpha · CE + (1 - alpha) · T² · D(p_T, p_S)   over positions with a real next token
        zero_grad, backward, (clip to max_grad_norm), step

    ``autocast``: the forward passes in bf16 where the hardware has it (``config.autocast``);
    ``terms``: a dict that receives the detached ``loss``, ``soft`` and ``hard`` terms, for logging.
    """
    teacher.eval()
    student.train()
    precision = (lambda: config.autocast(_device(student))) if autocast else nullcontext
    with precision(), torch.no_grad():
        t_logits = teacher(input_ids=input_ids, attention_mask=attention_mask).logits          # (B, S, V)
    with precision():
        s_logits = student(input_ids=input_ids, attention_mask=attention_mask).logits          # (B, S, V)
        out = token_kd_terms(s_logits, t_logits, input_ids, attention_mask, temperature=T, alpha=alpha,
                             loss=loss, beta=beta, top_k=top_k)
    _step_student(student, optimizer, out["loss"], max_grad_norm)
    if terms is not None:
        terms.update({k: v.detach() for k, v in out.items()})
    return float(out["loss"].detach())


def distill_clm(student, teacher, blocks: torch.Tensor, cfg: TokenKDConfig | None = None, *,
                progress: bool = True, desc: str = "distil") -> History:
    """Token-level KD: ``cfg.steps`` calls of ``token_kd_step`` on seeded batches of ``blocks`` ``(N, S)``.

    ``loss = alpha · CE(next token) + (1 - alpha) · T² · D(p_T, p_S)`` with D the forward KL,
    reverse KL or generalized JSD of ``cfg.loss`` (or the top-k forward KL when ``cfg.top_k``),
    AdamW with warm-up and linear decay, gradients clipped at ``cfg.max_grad_norm``.
    Teacher and student must share the tokenizer.
    """
    cfg = cfg or TokenKDConfig()
    checks.divergence(cfg.loss, losses.DIVERGENCES)
    gen, opt, sched, history, start = _setup(student, cfg)
    dev = _device(student)
    for step, idx in progress_line(_batches(len(blocks), cfg, gen), total=cfg.steps, desc=desc, enabled=progress):
        terms = {}
        token_kd_step(student, teacher, blocks[idx].to(dev), None, opt, cfg.temperature, cfg.alpha, **cfg.kd(),
                      max_grad_norm=cfg.max_grad_norm, autocast=True, terms=terms)
        sched.step()
        _log(history, terms, step, cfg, start)
    del opt, sched
    return _finish(student, history)


def distill_clm_many(students: dict, teacher, blocks: torch.Tensor, cfgs: dict, *, progress: bool = True,
                     desc: str = "distil (lockstep)") -> dict:
    """``distill_clm`` for several students at once, one teacher forward per step serving them all.

    ``students`` and ``cfgs`` are dicts with the same names; the configs may differ in the loss,
    temperature, top-k, alpha or learning rate, but must share ``steps``, ``batch_size``, ``seed``
    and ``log_every``, so every student sees the same batches. With one student this is exactly
    ``distill_clm``; with several, dropout draws interleave, so a student's run differs from its
    solo run as a different seed would. Returns ``{name: History}``.
    """
    if set(students) != set(cfgs) or not students:
        raise ValueError(f"students and cfgs need the same (non-empty) names, got {sorted(students)} and "
                         f"{sorted(cfgs)}")
    shared = {(c.steps, c.batch_size, c.seed, c.log_every) for c in cfgs.values()}
    if len(shared) > 1:
        raise ValueError(f"the configs must share steps, batch_size, seed and log_every, got {sorted(shared)}")
    for c in cfgs.values():
        checks.divergence(c.loss, losses.DIVERGENCES)
    first = next(iter(cfgs.values()))
    teacher.eval()
    gen = config.seed_everything(first.seed)
    dev = _device(teacher)
    state = {name: _optimizer(students[name], cfgs[name]) for name in students}
    histories = {name: History(settings=asdict(cfgs[name])) for name in students}
    start = time.perf_counter()
    for m in students.values():
        m.train()
    for step, idx in progress_line(_batches(len(blocks), first, gen), total=first.steps, desc=desc,
                                   enabled=progress):
        x = blocks[idx].to(dev)
        with config.autocast(dev), torch.no_grad():
            t_logits = teacher(input_ids=x).logits                          # (B, S, V), shared
        for name, student in students.items():
            c = cfgs[name]
            with config.autocast(dev):
                out = token_kd_terms(student(input_ids=x).logits, t_logits, x, temperature=c.temperature,
                                     alpha=c.alpha, **c.kd())
            _update(out["loss"], *state[name], c, step)
            _log(histories[name], out, step, c, start)
    del state
    for m in students.values():
        m.eval()
    config.trim_heap()
    return histories


# ---------------------------------------- sequence-level and on-policy distillation

@torch.no_grad()
def sample_blocks(model, prompts: torch.Tensor, length: int, *, temperature: float = 1.0) -> torch.Tensor:
    """Continue each prompt ``(B, P)`` by sampling from ``model`` until rows are ``length`` long ``(B, length)``.

    Plain ancestral sampling (no top-k or top-p), never stopping early, in eval mode.
    """
    if prompts.ndim != 2 or prompts.shape[1] < 1:
        raise ValueError(f"prompts must be (batch, prompt_length >= 1) token ids, got shape {tuple(prompts.shape)}")
    new = length - prompts.shape[1]
    if new < 1:
        raise ValueError(f"length ({length}) must exceed the prompt length ({prompts.shape[1]})")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    was_training = model.training
    model.eval()
    eos = model.config.eos_token_id
    out = model.generate(prompts.to(_device(model)), attention_mask=torch.ones_like(prompts).to(_device(model)),
                         do_sample=True, temperature=temperature, top_k=0, top_p=1.0, max_new_tokens=new,
                         min_new_tokens=new, pad_token_id=eos)
    model.train(was_training)
    return out.cpu()


def teacher_corpus(teacher, n_blocks: int, block: int, sep_id: int, *, batch_size: int = 32,
                   temperature: float = 1.0, seed: int = 0, progress: bool = True) -> torch.Tensor:
    """Sequence-level KD's data (Kim and Rush 2016): ``n_blocks`` rows ``(n_blocks, block)``, each the
    separator token followed by ``block - 1`` tokens the teacher wrote. A student then learns them with
    hard labels (``fit_clm``); Alpaca-style data distillation is the same idea with a chat model."""
    if n_blocks < 1:
        raise ValueError(f"n_blocks must be >= 1, got {n_blocks}")
    config.seed_everything(seed)
    rows = []
    for start in progress_line(range(0, n_blocks, batch_size), desc="teacher writes", enabled=progress,
                               unit="batches"):
        n = min(batch_size, n_blocks - start)
        rows.append(sample_blocks(teacher, torch.full((n, 1), sep_id), block, temperature=temperature))
    return torch.cat(rows)


@dataclass
class OnPolicyConfig(TokenKDConfig):
    on_policy: float = 1.0       # share of the steps trained on the student's own samples (GKD's lambda)
    prompt_length: int = 8       # tokens of real text that start each student sample
    loss: str = "reverse"        # GKD (Agarwal et al. 2024): the best divergence depends on the task


def distill_on_policy(student, teacher, blocks: torch.Tensor, cfg: OnPolicyConfig | None = None, *,
                      progress: bool = True, desc: str = "on-policy") -> History:
    """On-policy KD (GKD, Agarwal et al. 2024): with probability ``cfg.on_policy`` a step's batch is
    written by the *student* (each row continues the first ``prompt_length`` tokens of a training
    block), otherwise it is the training blocks; the teacher then scores every position and the
    student matches it with ``token_kd_terms``. Sampling costs one generation per on-policy step."""
    cfg = cfg or OnPolicyConfig()
    if not 0.0 <= cfg.on_policy <= 1.0:
        raise ValueError(f"on_policy must be in [0, 1], got {cfg.on_policy}")
    if not 1 <= cfg.prompt_length < blocks.shape[1]:
        raise ValueError(f"prompt_length must be in [1, {blocks.shape[1] - 1}], got {cfg.prompt_length}")
    teacher.eval()
    dev = _device(student)

    def step_loss(idx, gen):
        x = blocks[idx]
        sampled = bool(torch.rand((), generator=gen) < cfg.on_policy)
        if sampled:
            x = sample_blocks(student, x[:, :cfg.prompt_length], x.shape[1])
        x = x.to(dev)
        with torch.no_grad():
            t_logits = teacher(input_ids=x).logits
        out = token_kd_terms(student(input_ids=x).logits, t_logits, x, temperature=cfg.temperature,
                             alpha=cfg.alpha, **cfg.kd())
        out["on_policy"] = torch.tensor(float(sampled))
        return out

    return _steps(student, len(blocks), cfg, step_loss, progress, desc)
