"""``kdlab distill``: token-level distillation of a causal LM, the script version for real work.

The notebooks distil tiny models in-process; this runs the same loss
(``train_text.clm_kd_terms``: ``alpha·CE + (1 - alpha)·T²·D(p_T, p_S)`` with D the
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
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict
from pathlib import Path

import torch

from . import metrics as kd_metrics, models, text, train_text

LOSSES = ("forward", "reverse", "jsd")


def check_args(args) -> None:
    """Every setting checked before a model is loaded, each with the fix in the message."""
    if not args.text and not args.hub_text:
        raise ValueError("give the training text: --text FILE (repeatable), or --hub-text REPO:FILE with --online")
    if args.hub_text and not args.online:
        raise ValueError(f"--hub-text {args.hub_text} downloads from the Hugging Face Hub: add --online "
                         f"(or download the file yourself and pass it with --text)")
    for path in args.text or []:
        if not Path(path).is_file():
            raise ValueError(f"--text {path}: no such file")
    if args.loss not in LOSSES:
        raise ValueError(f"--loss must be one of {LOSSES}, got {args.loss!r}")
    if not args.temperature > 0:
        raise ValueError(f"--temperature must be > 0, got {args.temperature}")
    if not 0.0 <= args.alpha <= 1.0:
        raise ValueError(f"--alpha (weight of the hard next-token loss) must be in [0, 1], got {args.alpha}")
    if args.top_k is not None and args.top_k < 1:
        raise ValueError(f"--top-k must be >= 1, got {args.top_k}")
    for name in ("steps", "batch_size", "block"):
        if getattr(args, name) < 1:
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


def run(args) -> dict:
    """Distil ``args.teacher`` into ``args.student`` with Accelerate; return the metrics written."""
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
    teacher = load_causal_lm(args.teacher, args.online, "teacher")
    student = load_causal_lm(args.student, args.online, "student")
    if teacher.config.vocab_size != student.config.vocab_size:
        raise ValueError(f"teacher and student must share a vocabulary: {teacher.config.vocab_size} vs "
                         f"{student.config.vocab_size} tokens")
    tok = load_tokenizer(args)
    if len(tok) > student.config.vocab_size:
        raise ValueError(f"the tokenizer has {len(tok)} tokens but the models only {student.config.vocab_size}")
    train_blocks, val_blocks = split_blocks(text.token_blocks(read_texts(args), tok, args.block), args.val_fraction)
    if len(train_blocks) < args.batch_size:
        raise ValueError(f"the text gives {len(train_blocks)} training blocks of {args.block} tokens, fewer than "
                         f"--batch-size {args.batch_size}: give more text or a smaller batch or block")
    cfg = train_text.TokenKDConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                                   temperature=args.temperature, alpha=args.alpha, loss=args.loss,
                                   top_k=args.top_k, seed=args.seed, log_every=args.log_every)
    loader = torch.utils.data.DataLoader(train_blocks, batch_size=args.batch_size, shuffle=True, drop_last=True,
                                         generator=torch.Generator().manual_seed(args.seed))
    opt = torch.optim.AdamW(student.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = get_linear_schedule_with_warmup(opt, int(cfg.warmup * cfg.steps), cfg.steps)
    student, opt, loader, sched = accelerator.prepare(student, opt, loader, sched)
    teacher = teacher.to(accelerator.device).eval().requires_grad_(False)
    out = Path(args.out)
    history, start, step = [], time.perf_counter(), 0
    bar = tqdm(total=cfg.steps, desc="kdlab distill", disable=not accelerator.is_local_main_process)
    student.train()
    while step < cfg.steps:
        for x in loader:                                   # x: (B / processes, S) on this process
            with accelerator.autocast():
                with torch.no_grad():
                    t_logits = teacher(input_ids=x).logits
                terms = train_text.clm_kd_terms(student(input_ids=x).logits, t_logits, x, cfg)
            if not torch.isfinite(terms["loss"]):
                raise FloatingPointError(f"the loss became {float(terms['loss'].detach())} at step {step + 1}: "
                                         f"lower --lr (now {cfg.lr:g})")
            accelerator.backward(terms["loss"])
            accelerator.clip_grad_norm_(student.parameters(), cfg.max_grad_norm)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            bar.update(1)
            if step % cfg.log_every == 0 or step == cfg.steps:
                mean = {k: float(accelerator.reduce(v.detach().float(), reduction="mean")) for k, v in terms.items()}
                history.append({"step": step, **mean, "seconds": round(time.perf_counter() - start, 2)})
                bar.set_postfix(loss=f"{mean['loss']:.3f}")
            if args.save_every and step % args.save_every == 0:
                save(accelerator, student, tok, out / f"checkpoint-{step}")
            if step == cfg.steps:
                break
    bar.close()
    student.eval()
    save(accelerator, student, tok, out / "student")
    replicas = gather_object([state_sha256(accelerator.unwrap_model(student))])
    metrics = {
        "command": "kdlab distill", "teacher": str(args.teacher), "student_init": str(args.student),
        "settings": {**asdict(cfg), "block": args.block, "val_fraction": args.val_fraction,
                     "mixed_precision": args.mixed_precision},
        "num_processes": accelerator.num_processes, "device": str(accelerator.device),
        "train_blocks": len(train_blocks), "val_blocks": len(val_blocks), "history": history,
        "replica_sha256": replicas, "replicas_identical": len(set(replicas)) == 1,
        "seconds": round(time.perf_counter() - start, 1),
    }
    if accelerator.is_main_process:
        if len(val_blocks):
            s = accelerator.unwrap_model(student)
            metrics["val_perplexity"] = {"teacher": kd_metrics.perplexity(teacher, val_blocks),
                                         "student": kd_metrics.perplexity(s, val_blocks)}
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    accelerator.wait_for_everyone()
    return metrics


def save(accelerator, student, tok, path: Path) -> None:
    """``save_pretrained`` from the main process only, after every process has finished its step."""
    accelerator.wait_for_everyone()
    model = accelerator.unwrap_model(student)
    model.save_pretrained(path, is_main_process=accelerator.is_main_process, save_function=accelerator.save)
    if accelerator.is_main_process:
        tok.save_pretrained(path)


def add_arguments(p) -> None:
    """The ``kdlab distill`` options (shared by the CLI and the tests)."""
    p.add_argument("--teacher", required=True, help="shipped name, local directory, or (with --online) hub name")
    p.add_argument("--student", required=True, help="the student's initial weights: shipped name, directory or hub name")
    p.add_argument("--tokenizer", default=None, help="bpe, wordpiece, a directory or (online) a hub name "
                                                     "(default: the teacher's)")
    p.add_argument("--text", action="append", help="a local UTF-8 text file (repeatable)")
    p.add_argument("--hub-text", default=None, help="REPO:FILE, a text file of a Hugging Face data set (--online)")
    p.add_argument("--online", action="store_true", help="allow downloads from the Hugging Face Hub")
    p.add_argument("--out", required=True, help="output directory (student/, checkpoint-STEP/, metrics.json)")
    p.add_argument("--loss", default="forward", choices=LOSSES)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--alpha", type=float, default=0.0, help="weight of the hard next-token loss (0: pure KD)")
    p.add_argument("--top-k", type=int, default=None, help="distil from the teacher's top-k logits only")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=16, help="blocks per step, over all processes")
    p.add_argument("--block", type=int, default=128, help="tokens per block")
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--val-fraction", type=float, default=0.05, help="share of the blocks held out for perplexity")
    p.add_argument("--save-every", type=int, default=0, help="write OUT/checkpoint-STEP every N steps (0: never)")
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--mixed-precision", default="no", choices=["no", "fp16", "bf16"])
    p.add_argument("--cpu", action="store_true", help="run on the CPU even where a GPU is present")
    p.add_argument("--seed", type=int, default=0)


def summary(metrics: dict) -> str:
    ppl = metrics.get("val_perplexity")
    lines = [f"distilled on {metrics['num_processes']} process(es), {metrics['device']}, "
             f"{metrics['settings']['steps']} steps in {metrics['seconds']:.0f} s"]
    if ppl:
        lines.append(f"held-out perplexity: teacher {ppl['teacher']:.1f}, student {ppl['student']:.1f}")
    return "\n".join(lines)
