"""``kdlab distill``: token-level distillation of a causal LM, the script version for real work.

The notebooks distil tiny models in-process; this runs the same loss
(``train_text.token_kd_terms``: ``alpha·CE + (1 - alpha)·T²·D(p_T, p_S)`` with D the
forward KL, reverse KL or generalised JSD, optionally from the teacher's top-k
logits) on Hugging Face Accelerate, so one command serves a laptop CPU, one GPU,
or ``accelerate launch --num_processes N`` on several GPUs or processes
without code changes. Each process takes its own share of every batch;
gradients are averaged across processes, so every replica holds the same
weights (the metrics file records each replica's checksum to prove it).

    kdlab distill --teacher DIR|NAME --student DIR|NAME --text corpus.txt --out runs/x
    accelerate launch --num_processes 8 -m kdlab_lib.cli distill --online \\
        --teacher gpt2-large --student gpt2 --hub-text roneneldan/TinyStories:TinyStories-valid.txt ...

Writes ``OUT/student/`` (``save_pretrained``: config, safetensors weights, tokenizer),
``OUT/checkpoint-STEP/`` every ``--save-every`` steps, and ``OUT/metrics.json``.

The fast, memory-lean path (``fast_kd``): ``--chunked`` computes the student's projection and
the loss a chunk of positions at a time (``--chunk-size``), ``--pad-vocab`` pads the vocabulary
to a multiple of 64 (kept out of every softmax; the saved student has its own vocabulary),
``--compile`` uses ``torch.compile``, AdamW is fused on a GPU. ``kdlab cache-logits`` runs the
teacher once and stores its top-k logits (``logit_cache``); ``--from-cache DIR`` then trains
the student from them without loading the teacher:

    kdlab cache-logits --teacher DIR --text corpus.txt --out cache/ --k 100
    kdlab distill --from-cache cache/ --student DIR --out runs/y --chunked
"""
from __future__ import annotations

import hashlib
import json
import shlex
import time
from dataclasses import asdict
from pathlib import Path

import torch

from ..core import config, losses, models, text, train_text
from ..core import metrics as kd_metrics
from . import fast_kd, logit_cache


def check_args(args) -> None:
    """Every setting checked before a model is loaded, each with the fix in the message."""
    if args.from_cache:
        if not Path(args.from_cache).is_dir():
            raise ValueError(f"--from-cache {args.from_cache}: no such directory (make it with `kdlab cache-logits`)")
        for flag, value in (("--teacher", args.teacher), ("--text", args.text), ("--hub-text", args.hub_text)):
            if value:
                raise ValueError(f"--from-cache trains on the cache's own blocks and teacher logits: drop {flag}")
        if args.loss != "forward":
            raise ValueError(f"--from-cache holds the teacher's top-k logits only, enough for the forward KL; "
                             f"--loss {args.loss} needs the whole distribution (train online instead)")
    else:
        if not args.teacher:
            raise ValueError("give the teacher: --teacher DIR|NAME (or train from a logit cache: --from-cache DIR)")
        if not args.text and not args.hub_text:
            raise ValueError("give the training text: --text FILE (repeatable), or --hub-text REPO:FILE with --online")
    if args.hub_text and not args.online:
        raise ValueError(f"--hub-text {args.hub_text} downloads from the Hugging Face Hub: add --online "
                         f"(or download the file yourself and pass it with --text)")
    for path in args.text or []:
        if not Path(path).is_file():
            raise ValueError(f"--text {path}: no such file")
    if args.loss not in losses.DIVERGENCES:
        raise ValueError(f"--loss must be one of {losses.DIVERGENCES}, got {args.loss!r}")
    if not args.temperature > 0:
        raise ValueError(f"--temperature must be > 0, got {args.temperature}")
    if not 0.0 <= args.alpha <= 1.0:
        raise ValueError(f"--alpha (weight of the hard next-token loss) must be in [0, 1], got {args.alpha}")
    if args.top_k is not None and args.top_k < 1:
        raise ValueError(f"--top-k must be >= 1, got {args.top_k}")
    if args.top_k is not None and args.loss != "forward":
        raise ValueError(f"--top-k keeps the teacher's k largest logits for the forward KL; --loss {args.loss} "
                         f"needs the teacher's whole distribution (drop --top-k)")
    for name in ("steps", "batch_size", "block", "chunk_size"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if not 0.0 <= args.val_fraction < 1.0:
        raise ValueError(f"--val-fraction must be in [0, 1), got {args.val_fraction}")


def load_causal_lm(name: str, online: bool, role: str):
    """A causal LM by shipped name, local directory or (online) hub name; anything else is refused."""
    model = models.load_teacher(name, online=online, device="cpu")
    if not hasattr(model, "config") or not getattr(model, "can_generate", lambda: False)():
        raise ValueError(f"--{role} {name}: {type(model).__name__} is not a causal language model "
                         f"(such as GPT2LMHeadModel); kdlab distill distils next-token distributions")
    return model


def load_tokenizer(args):
    """``--tokenizer`` (a shipped kind, a directory or, online, a hub name), else the teacher's own."""
    from transformers import AutoTokenizer
    source = args.tokenizer
    if source is None and getattr(args, "from_cache", None):
        source = Path(args.from_cache) / "tokenizer"
        if not source.is_dir():
            raise ValueError(f"{args.from_cache} holds no tokenizer/ folder: pass --tokenizer")
        return AutoTokenizer.from_pretrained(source, local_files_only=True)
    if source is None:
        if Path(args.teacher).is_dir() and any(Path(args.teacher).glob("tokenizer*.json")):
            source = args.teacher
        elif args.teacher in models.SHIPPED:
            source = "bpe"
        elif args.online:
            source = args.teacher
        else:
            raise ValueError(f"no tokenizer found beside --teacher {args.teacher}: pass --tokenizer "
                             f"(bpe, wordpiece, or a directory with tokenizer.json)")
    if source in text.TOKENIZERS:
        return text.load_tokenizer(source)
    if not Path(source).is_dir() and not args.online:
        raise ValueError(f"--tokenizer {source} is neither a shipped kind {text.TOKENIZERS} nor a "
                         f"directory; a hub name needs --online")
    return AutoTokenizer.from_pretrained(source, local_files_only=not args.online)


def read_texts(args) -> list[str]:
    """The training documents: each ``--text`` file, and the ``--hub-text`` file (online)."""
    docs = [Path(p).read_text(encoding="utf-8") for p in args.text or []]
    if args.hub_text:
        from huggingface_hub import hf_hub_download
        repo, _, filename = args.hub_text.partition(":")
        if not filename:
            raise ValueError(f"--hub-text must be REPO:FILE (a file of a hub data set), got {args.hub_text!r}")
        docs.append(Path(hf_hub_download(repo, filename, repo_type="dataset")).read_text(encoding="utf-8"))
    return docs


def split_blocks(blocks: torch.Tensor, val_fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The last ``val_fraction`` of the blocks ``(N, S)`` held out for perplexity (the same on every run)."""
    n_val = int(len(blocks) * val_fraction)
    if len(blocks) - n_val < 1:
        raise ValueError(f"the text gives {len(blocks)} blocks, too few to hold out {val_fraction:.0%}")
    return blocks[:len(blocks) - n_val], blocks[len(blocks) - n_val:]


def state_sha256(model) -> str:
    """A checksum of a model's weights, to compare replicas."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()


def _online_data(args, teacher, student):
    """Tokenizer and blocks for online distillation, vocabularies checked: ``(tok, train, val)``."""
    if teacher.config.vocab_size != student.config.vocab_size:
        raise ValueError(f"teacher and student must share a vocabulary: {teacher.config.vocab_size} vs "
                         f"{student.config.vocab_size} tokens")
    tok = load_tokenizer(args)
    if len(tok) > student.config.vocab_size:
        raise ValueError(f"the tokenizer has {len(tok)} tokens but the models only {student.config.vocab_size}")
    train_blocks, val_blocks = split_blocks(text.token_blocks(read_texts(args), tok, args.block or 128),
                                            args.val_fraction)
    return tok, train_blocks, val_blocks


def _cache_data(args, student):
    """The logit cache, its tokenizer and held-out blocks: ``(cache, tok, val)``; vocabulary and block checked."""
    cache = logit_cache.LogitCache(args.from_cache)
    if cache.vocab_size != student.config.vocab_size:
        raise ValueError(f"the cache's teacher has {cache.vocab_size} tokens but the student "
                         f"{student.config.vocab_size}: "
                         f"they must share a vocabulary")
    if args.block is not None and args.block != cache.block:
        raise ValueError(f"--block {args.block}: the cache holds blocks of {cache.block} tokens (drop --block)")
    if args.top_k is not None and args.top_k > cache.k:
        raise ValueError(f"--top-k {args.top_k}: the cache holds the top {cache.k} logits only")
    held = cache.heldout()
    return cache, load_tokenizer(args), held if held is not None else torch.empty(0, cache.block, dtype=torch.long)


def _epochs(loader):
    """The loader's batches, epoch after epoch (it reshuffles each time)."""
    while True:
        yield from loader


def _cache_batches(cache, args, accelerator):
    """This process's share of each cache batch: ``(x, values, indices)`` on its device."""
    per = args.batch_size // accelerator.num_processes
    rows = slice(accelerator.process_index * per, (accelerator.process_index + 1) * per)
    for batch in cache.batches(args.batch_size, seed=args.seed):
        yield tuple(t[rows].to(accelerator.device, non_blocking=True) for t in batch)


def mode_name(args) -> str:
    return ("from cache" if args.from_cache else "online") + (", chunked" if args.chunked else ", full logits")


def run(args) -> dict:
    """Distil ``args.teacher`` (or a logit cache) into ``args.student`` with Accelerate; return the metrics."""
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, gather_object, set_seed
    from tqdm.auto import tqdm
    from transformers import get_linear_schedule_with_warmup

    check_args(args)
    accelerator = Accelerator(cpu=args.cpu, mixed_precision=args.mixed_precision,
                              dataloader_config=DataLoaderConfiguration(split_batches=True))
    if args.batch_size % accelerator.num_processes:
        raise ValueError(f"--batch-size {args.batch_size} is split over {accelerator.num_processes} processes: "
                         f"make it a multiple of {accelerator.num_processes}")
    set_seed(args.seed)
    dev = accelerator.device
    if args.from_cache:
        student = load_causal_lm(args.student, args.online, "student")
        cache, tok, val_blocks = _cache_data(args, student)
        teacher, n_train, block = None, len(cache), cache.block
        teacher_ppl = cache.manifest.get("teacher_val_perplexity")
    else:
        teacher = load_causal_lm(args.teacher, args.online, "teacher")
        student = load_causal_lm(args.student, args.online, "student")
        tok, train_blocks, val_blocks = _online_data(args, teacher, student)
        n_train, block = len(train_blocks), train_blocks.shape[1]
        teacher = teacher.to(dev).eval().requires_grad_(False)
        teacher_ppl = (kd_metrics.perplexity(teacher, val_blocks)     # before any padding of its vocabulary
                       if accelerator.is_main_process and len(val_blocks) else None)
    if n_train < args.batch_size:
        source = "the cache holds" if args.from_cache else "the text gives"
        raise ValueError(f"{source} {n_train} training blocks of {block} tokens, fewer than "
                         f"--batch-size {args.batch_size}: give more text or a smaller batch or block")
    vocab = student.config.vocab_size
    if args.pad_vocab:
        fast_kd.pad_vocab(student)
        if teacher is not None:
            fast_kd.pad_vocab(teacher)
    cfg = train_text.TokenKDConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                                   temperature=args.temperature, alpha=args.alpha, loss=args.loss,
                                   top_k=args.top_k, seed=args.seed, log_every=args.log_every)
    student.to(dev)
    opt = fast_kd.adamw(student.parameters(), cfg.lr, cfg.weight_decay, dev)
    sched = get_linear_schedule_with_warmup(opt, int(cfg.warmup * cfg.steps), cfg.steps)
    student = fast_kd.maybe_compile(student, args.compile)
    if args.from_cache:
        student, opt, sched = accelerator.prepare(student, opt, sched)
        batches = _cache_batches(cache, args, accelerator)
        step_terms = lambda b: fast_kd.cached_terms(student, *b, cfg, vocab, args.chunk_size if args.chunked else None)
    else:
        loader = torch.utils.data.DataLoader(train_blocks, batch_size=args.batch_size, shuffle=True, drop_last=True,
                                             generator=torch.Generator().manual_seed(args.seed))
        student, opt, loader, sched = accelerator.prepare(student, opt, loader, sched)
        batches = ((x,) for x in _epochs(loader))                   # x: (B / processes, S) on this process
        teacher = fast_kd.maybe_compile(teacher, args.compile)
        if args.chunked:
            step_terms = lambda b: fast_kd.chunked_terms(student, teacher, b[0], cfg, vocab, args.chunk_size)
        else:
            step_terms = lambda b: fast_kd.full_terms(student, teacher, b[0], cfg, vocab)
    out = Path(args.out)
    history, start = [], time.perf_counter()
    bar = tqdm(total=cfg.steps, desc="kdlab distill", disable=not accelerator.is_local_main_process)
    student.train()
    for step in range(1, cfg.steps + 1):
        batch = next(batches)
        with accelerator.autocast():
            terms = step_terms(batch)
        if not torch.isfinite(terms["loss"]):
            raise FloatingPointError(f"the loss became {float(terms['loss'].detach())} at step {step}: "
                                     f"lower --lr (now {cfg.lr:g})")
        accelerator.backward(terms["loss"])
        accelerator.clip_grad_norm_(student.parameters(), cfg.max_grad_norm)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        bar.update(1)
        if step % cfg.log_every == 0 or step == cfg.steps:
            mean = {k: float(accelerator.reduce(v.detach().float(), reduction="mean")) for k, v in terms.items()}
            history.append({"step": step, **mean, "seconds": round(time.perf_counter() - start, 2)})
            bar.set_postfix(loss=f"{mean['loss']:.3f}")
        if args.save_every and step % args.save_every == 0:
            save(accelerator, student, tok, out / f"checkpoint-{step}", vocab)
    bar.close()
    student.eval()
    save(accelerator, student, tok, out / "student", vocab)
    final = fast_kd.unpadded_copy(accelerator.unwrap_model(student, keep_torch_compile=False), vocab)
    replicas = gather_object([state_sha256(final)])
    metrics = {
        "command": "kdlab distill", "teacher": str(args.teacher or cache.manifest.get("teacher")),
        "student_init": str(args.student), "mode": mode_name(args),
        "settings": {**asdict(cfg), "block": block, "val_fraction": args.val_fraction,
                     "mixed_precision": args.mixed_precision, "chunked": args.chunked,
                     "chunk_size": args.chunk_size if args.chunked else None, "pad_vocab": args.pad_vocab,
                     "compile": args.compile, "from_cache": args.from_cache},
        "num_processes": accelerator.num_processes, "device": str(dev),
        "train_blocks": n_train, "val_blocks": len(val_blocks), "history": history,
        "replica_sha256": replicas, "replicas_identical": len(set(replicas)) == 1,
        "seconds": round(time.perf_counter() - start, 1),
    }
    if accelerator.is_main_process:
        if len(val_blocks):
            metrics["val_perplexity"] = {"teacher": teacher_ppl, "student": kd_metrics.perplexity(final, val_blocks)}
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    accelerator.wait_for_everyone()
    return metrics


def save(accelerator, student, tok, path: Path, vocab_size: int) -> None:
    """``save_pretrained`` from the main process only, after every process has finished its step;
    a padded vocabulary is cut back to ``vocab_size`` in the saved copy."""
    accelerator.wait_for_everyone()
    model = accelerator.unwrap_model(student, keep_torch_compile=False)
    if accelerator.is_main_process:
        model = fast_kd.unpadded_copy(model, vocab_size)
    model.save_pretrained(path, is_main_process=accelerator.is_main_process, save_function=accelerator.save)
    if accelerator.is_main_process:
        tok.save_pretrained(path)


# ------------------------------------------------------------------ kdlab cache-logits

def cache_command(args) -> str:
    """The command line that re-creates a cache (named in every refusal of a corrupt one)."""
    argv = ["kdlab", "cache-logits", "--teacher", str(args.teacher), "--out", str(args.out), "--k", str(args.k),
            "--block", str(args.block), "--val-fraction", str(args.val_fraction)]
    for path in args.text or []:
        argv += ["--text", str(path)]
    for flag, value in (("--hub-text", args.hub_text), ("--tokenizer", args.tokenizer)):
        if value:
            argv += [flag, str(value)]
    return shlex.join(argv + (["--online"] if args.online else []))


def run_cache_logits(args) -> dict:
    """``kdlab cache-logits``: the teacher's top-k logits over the training blocks, written once; the manifest."""
    if not args.text and not args.hub_text:
        raise ValueError("give the text to cache: --text FILE (repeatable), or --hub-text REPO:FILE with --online")
    if args.hub_text and not args.online:
        raise ValueError(f"--hub-text {args.hub_text} downloads from the Hugging Face Hub: add --online")
    for path in args.text or []:
        if not Path(path).is_file():
            raise ValueError(f"--text {path}: no such file")
    if not 0.0 <= args.val_fraction < 1.0:
        raise ValueError(f"--val-fraction must be in [0, 1), got {args.val_fraction}")
    if args.block < 2:
        raise ValueError(f"--block must be >= 2 (a block's positions predict its next tokens), got {args.block}")
    dev = torch.device("cpu") if args.cpu else config.device()
    teacher = load_causal_lm(args.teacher, args.online, "teacher").to(dev).eval().requires_grad_(False)
    tok = load_tokenizer(args)
    train_blocks, val_blocks = split_blocks(text.token_blocks(read_texts(args), tok, args.block), args.val_fraction)
    vocab = teacher.config.vocab_size
    teacher_ppl = kd_metrics.perplexity(teacher, val_blocks) if len(val_blocks) else None
    if args.pad_vocab:
        fast_kd.pad_vocab(teacher)
    teacher = fast_kd.maybe_compile(teacher, args.compile)
    bf16 = (lambda: torch.autocast(dev.type, dtype=torch.bfloat16)) if args.mixed_precision == "bf16" else None
    start = time.perf_counter()
    manifest = logit_cache.write_cache(
        teacher, train_blocks, args.out, k=args.k, vocab_size=vocab, batch_size=args.batch_size,
        shard_blocks=args.shard_blocks, chunk_size=args.chunk_size, heldout=val_blocks, command=cache_command(args),
        info={"teacher": str(args.teacher), "teacher_val_perplexity": teacher_ppl, "tokenizer": "tokenizer/",
              "device": str(dev)},
        add_files=lambda d: tok.save_pretrained(d / "tokenizer"), progress=not args.no_progress, autocast=bf16)
    manifest["seconds"] = round(time.perf_counter() - start, 1)
    return manifest


def add_cache_arguments(p) -> None:
    """The ``kdlab cache-logits`` options."""
    p.add_argument("--teacher", required=True, help="shipped name, local directory, or (with --online) hub name")
    p.add_argument("--tokenizer", default=None, help="bpe, wordpiece, a directory or (online) a hub name "
                                                     "(default: the teacher's)")
    p.add_argument("--text", action="append", help="a local UTF-8 text file (repeatable)")
    p.add_argument("--hub-text", default=None, help="REPO:FILE, a text file of a Hugging Face data set (--online)")
    p.add_argument("--online", action="store_true", help="allow downloads from the Hugging Face Hub")
    p.add_argument("--out", required=True, help="the cache directory to create (must not exist yet)")
    p.add_argument("--k", type=int, default=100, help="logits kept per position (default 100)")
    p.add_argument("--block", type=int, default=128, help="tokens per block (the student trains on these blocks)")
    p.add_argument("--val-fraction", type=float, default=0.05, help="share of the blocks held out (ids only)")
    p.add_argument("--batch-size", type=int, default=16, help="blocks per teacher forward pass")
    p.add_argument("--shard-blocks", type=int, default=256, help="blocks per shard file")
    p.add_argument("--chunk-size", type=int, default=1024, help="positions projected onto the vocabulary at a time")
    p.add_argument("--pad-vocab", action="store_true", help="pad the teacher's vocabulary to a multiple of 64")
    p.add_argument("--compile", action="store_true", help="torch.compile the teacher")
    p.add_argument("--mixed-precision", default="no", choices=["no", "bf16"], help="bf16 autocast for the teacher")
    p.add_argument("--cpu", action="store_true", help="run on the CPU even where a GPU is present")
    p.add_argument("--no-progress", action="store_true")


def add_arguments(p) -> None:
    """The ``kdlab distill`` options (shared by the CLI and the tests)."""
    p.add_argument("--teacher", default=None, help="shipped name, local directory, or (with --online) hub name "
                                                    "(not with --from-cache)")
    p.add_argument("--student", required=True,
                   help="the student's initial weights: shipped name, directory or hub name")
    p.add_argument("--tokenizer", default=None, help="bpe, wordpiece, a directory or (online) a hub name "
                                                     "(default: the teacher's, or the cache's)")
    p.add_argument("--from-cache", default=None, metavar="DIR",
                   help="train from a top-k logit cache written by `kdlab cache-logits` (no teacher, no text)")
    p.add_argument("--text", action="append", help="a local UTF-8 text file (repeatable)")
    p.add_argument("--hub-text", default=None, help="REPO:FILE, a text file of a Hugging Face data set (--online)")
    p.add_argument("--online", action="store_true", help="allow downloads from the Hugging Face Hub")
    p.add_argument("--out", required=True, help="output directory (student/, checkpoint-STEP/, metrics.json)")
    p.add_argument("--loss", default="forward", choices=losses.DIVERGENCES)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--alpha", type=float, default=0.0, help="weight of the hard next-token loss (0: pure KD)")
    p.add_argument("--top-k", type=int, default=None, help="distil from the teacher's top-k logits only "
                                                           "(with --from-cache: the first k of the cached ones)")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=16, help="blocks per step, over all processes")
    p.add_argument("--block", type=int, default=None,
                   help="tokens per block (default 128; with --from-cache: the cache's)")
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--val-fraction", type=float, default=0.05, help="share of the blocks held out for perplexity")
    p.add_argument("--save-every", type=int, default=0, help="write OUT/checkpoint-STEP every N steps (0: never)")
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--mixed-precision", default="no", choices=["no", "fp16", "bf16"])
    p.add_argument("--cpu", action="store_true", help="run on the CPU even where a GPU is present")
    p.add_argument("--seed", type=int, default=0)
    fast = p.add_argument_group("fast, memory-lean path")
    fast.add_argument("--chunked", action="store_true", help="project onto the vocabulary and compute the loss a "
                                                              "chunk of positions at a time (full logits never held)")
    fast.add_argument("--chunk-size", type=int, default=1024, help="positions per chunk with --chunked (default 1024)")
    fast.add_argument("--pad-vocab", action="store_true", help="pad the vocabulary to a multiple of 64 for fast matrix "
                                                               "products (padded entries never enter a softmax)")
    fast.add_argument("--compile", action="store_true", help="torch.compile the student (and the teacher)")


def summary(metrics: dict) -> str:
    ppl = metrics.get("val_perplexity")
    lines = [f"distilled ({metrics.get('mode', 'online, full logits')}) on {metrics['num_processes']} process(es), "
             f"{metrics['device']}, {metrics['settings']['steps']} steps in {metrics['seconds']:.0f} s"]
    if ppl:
        teacher = "n/a" if ppl["teacher"] is None else f"{ppl['teacher']:.1f}"
        lines.append(f"held-out perplexity: teacher {teacher}, student {ppl['student']:.1f}")
    return "\n".join(lines)
