"""``kdlab bench gpu``: speed and memory of the fast distillation path, on a GPU.

Speed does not depend on the weights, so both models are built locally (no download) from
the GPT-2 Large (teacher: 36 layers, 1,280 wide, 20 heads) and GPT-2 (student: 12, 768, 12)
configurations with random weights, the vocabulary padded from 50,257 to 50,304
(``fast_kd.pad_vocab``'s shape; the loss sees 50,257). Batches of 8 x 1,024 random tokens,
bf16 autocast, ``torch.compile``, fused AdamW. Five measurements, each with tokens per second,
peak GPU memory and model FLOP utilisation (MFU):

1. ``ceiling``: next-token training of the student alone;
2. ``online KD, full logits``: teacher forward + student step, the plain full-logit loss;
3. ``online KD, chunked``: the same from last hidden states (``chunked_loss``);
4. ``top-k cache pass``: the teacher's forward and top-100 per position, copied to host memory
   (what ``kdlab cache-logits`` does per batch, before the disk write);
5. ``student from top-k cache``: the student's step against those top-k logits (chunked), the
   cached batch copied from host memory each step (the disk read is not timed).

FLOPs per token (PaLM, Chowdhery et al. 2022, appendix B; as nanoGPT): a training step costs
``6·N + 12·L·H·S``, a forward pass ``2·N + 4·L·H·S`` (N the parameters less the position
embeddings, L layers, H width, S sequence length). ``MFU = FLOPs per token x tokens/s / peak``,
the peak being the device's dense bf16 figure (H100 SXM / H200: 989 TFLOP/s). Targets (issue 8,
for an H100): online KD (chunked) at least 40% of the ceiling's tokens/s at no more than 7 GiB
peak; the student from the top-k cache at least 85% of the ceiling.

Without a CUDA GPU it says so, writes nothing and returns None (``kdlab bench gpu`` exits 0).
"""
from __future__ import annotations

import gc
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from ...core import config, store, train_text
from ...scale import fast_kd, logit_cache

PEAK_BF16_FLOPS = {"H200": 989e12, "H100 PCIe": 756e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12,
                   "L4": 121e12, "A10G": 70e12}   # dense, no sparsity; vendor data sheets
TARGETS = {"online KD, chunked": {"min_fraction_of_ceiling": 0.40, "max_peak_gib": 7.0},
           "student from top-k cache": {"min_fraction_of_ceiling": 0.85}}
NO_GPU = ("kdlab bench gpu measures GPU throughput, but no CUDA GPU is visible here "
          "(torch.cuda.is_available() is False): nothing measured, no results file written.")


@dataclass
class GPUBench:
    teacher: tuple = (36, 1280, 20)   # GPT-2 Large: layers, width, heads
    student: tuple = (12, 768, 12)    # GPT-2 (124M)
    vocab: int = 50_257               # GPT-2's tokens; padded to 50,304 in the models
    batch: int = 8
    seq: int = 1024
    k: int = 100                      # top-k kept by the cache
    chunk_size: int = 1024            # positions per chunk in the chunked loss
    warmup: int = 3                   # untimed steps (compilation happens here)
    steps: int = 10                   # timed steps per measurement
    compile: bool = True
    lr: float = 1e-4


def sizes() -> GPUBench:
    """The issue's sizes; in quick mode tiny ones (numbers not claimed)."""
    if config.QUICK:
        return GPUBench(teacher=(2, 128, 2), student=(1, 64, 2), vocab=1000, batch=2, seq=64, k=10,
                        chunk_size=32, warmup=1, steps=2, compile=False)
    return GPUBench()


def build(shape: tuple, b: GPUBench, device, dtype=None):
    """A GPT-2 of ``(layers, width, heads)`` with random weights, vocabulary padded to a multiple of 64."""
    import transformers
    layers, width, heads = shape
    padded = -(-b.vocab // 64) * 64
    cfg = transformers.GPT2Config(vocab_size=padded, n_positions=b.seq, n_embd=width, n_layer=layers,
                                  n_head=heads, bos_token_id=0, eos_token_id=0)
    model = transformers.GPT2LMHeadModel(cfg)
    with torch.no_grad():   # padded entries: zero rows, cut before every softmax (fast_kd.true_logits)
        model.lm_head.weight[b.vocab:].zero_()
    return model.to(device=device, dtype=dtype)


def flops_per_token(shape: tuple, model, seq: int, train: bool) -> float:
    """PaLM's estimate: ``6N + 12·L·H·S`` (training) or ``2N + 4·L·H·S`` (forward)."""
    layers, width, _ = shape
    n = sum(p.numel() for p in model.parameters()) - model.transformer.wpe.weight.numel()
    return (6 * n + 12 * layers * width * seq) if train else (2 * n + 4 * layers * width * seq)


def peak_flops(device) -> tuple[str, float | None]:
    name = torch.cuda.get_device_name(device) if torch.device(device).type == "cuda" else "cpu"
    for key, value in PEAK_BF16_FLOPS.items():
        if key in name:
            return name, value
    return name, None


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def _free(device) -> None:
    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()


def measure(step, tokens_per_step: int, b: GPUBench, device) -> dict:
    """Tokens per second and peak memory of ``step()`` after ``b.warmup`` untimed calls."""
    cuda = torch.device(device).type == "cuda"
    try:
        for _ in range(b.warmup):
            step()
        _sync(device)
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()
        for _ in range(b.steps):
            step()
        _sync(device)
        seconds = time.perf_counter() - start
    except torch.OutOfMemoryError as err:
        _free(device)
        return {"error": f"out of memory: {str(err).splitlines()[0]}"}
    return {"tokens_per_s": tokens_per_step * b.steps / seconds, "seconds_per_step": seconds / b.steps,
            "peak_gib": torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None}


def _trainer(student, b: GPUBench, device, loss_fn):
    """A training step: ``loss_fn()`` under bf16 autocast, backward, fused AdamW."""
    opt = fast_kd.adamw(student.parameters(), b.lr, 0.01, device)
    dev_type = torch.device(device).type

    def step():
        with torch.autocast(dev_type, dtype=torch.bfloat16):
            loss = loss_fn()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def run_modes(b: GPUBench, device) -> dict:
    """The five measurements on ``device`` (any device: the test runs them on the CPU at tiny sizes)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, b.vocab, (b.batch, b.seq), generator=gen).to(device)        # (B, S)
    tokens = x.numel()
    cfg = train_text.TokenKDConfig(loss="forward", temperature=1.0, alpha=0.0)
    rows, flops = {}, {}
    dev_type = torch.device(device).type

    student = fast_kd.maybe_compile(build(b.student, b, device), b.compile)
    s_train = flops_per_token(b.student, student, b.seq, True)
    ceiling = _trainer(student, b, device,
                       lambda: F.cross_entropy(fast_kd.true_logits(student(input_ids=x).logits, b.vocab)[:, :-1]
                                               .flatten(0, 1).float(), x[:, 1:].flatten()))
    rows["ceiling"], flops["ceiling"] = measure(ceiling, tokens, b, device), s_train
    student = ceiling = None   # released before the next mode builds its models
    _free(device)

    teacher = build(b.teacher, b, device, dtype=torch.bfloat16).eval().requires_grad_(False)
    t_fwd = flops_per_token(b.teacher, teacher, b.seq, False)
    teacher = fast_kd.maybe_compile(teacher, b.compile)
    cached = {}

    def cache_pass():
        with torch.autocast(dev_type, dtype=torch.bfloat16):
            v, i = logit_cache.teacher_topk(teacher, x, b.k, b.vocab, b.chunk_size)
        cached["v"], cached["i"] = v.to("cpu", non_blocking=True), i.to("cpu", non_blocking=True)
    rows["top-k cache pass"], flops["top-k cache pass"] = measure(cache_pass, tokens, b, device), t_fwd

    for name, terms in (("online KD, full logits", fast_kd.full_terms), ("online KD, chunked", fast_kd.chunked_terms)):
        student = fast_kd.maybe_compile(build(b.student, b, device), b.compile)
        extra = {"chunk_size": b.chunk_size} if terms is fast_kd.chunked_terms else {}
        step = _trainer(student, b, device,
                        lambda terms=terms, student=student, extra=extra: terms(student, teacher, x, cfg, b.vocab,
                                                                               **extra)["loss"])
        rows[name], flops[name] = measure(step, tokens, b, device), s_train + t_fwd
        student = step = None
        _free(device)
    teacher = None
    _free(device)

    host = {k: (v.pin_memory() if dev_type == "cuda" else v) for k, v in cached.items()}
    values = logit_cache.unshift(host["v"])                                          # (B, S-1, k)
    student = fast_kd.maybe_compile(build(b.student, b, device), b.compile)
    step = _trainer(student, b, device, lambda: fast_kd.cached_terms(
        student, x, values.to(device, non_blocking=True), host["i"].to(device, non_blocking=True),
        cfg, b.vocab, b.chunk_size)["loss"])
    rows["student from top-k cache"], flops["student from top-k cache"] = measure(step, tokens, b, device), s_train
    student = step = None
    _free(device)
    return {"rows": rows, "flops_per_token": flops}


def verdict(rows: dict) -> list[str]:
    """Each target read against the measurement, in words."""
    ceiling = rows["ceiling"].get("tokens_per_s")
    lines = []
    for name, target in TARGETS.items():
        r = rows[name]
        if "error" in r or not ceiling:
            lines.append(f"{name}: not measured ({r.get('error', 'no ceiling')})")
            continue
        frac = r["tokens_per_s"] / ceiling
        ok = frac >= target["min_fraction_of_ceiling"]
        text = f"{name}: {frac:.0%} of the ceiling (target >= {target['min_fraction_of_ceiling']:.0%})"
        if "max_peak_gib" in target and r["peak_gib"] is not None:
            ok = ok and r["peak_gib"] <= target["max_peak_gib"]
            text += f", peak {r['peak_gib']:.1f} GiB (target <= {target['max_peak_gib']:.0f} GiB)"
        lines.append(f"{text}: {'met' if ok else 'NOT met'}")
    return lines


def bench_gpu(out=None) -> dict | None:
    """Measure on the first CUDA GPU and write ``data/results/gpu.json``; without one, say so and return None."""
    if not torch.cuda.is_available():
        print(NO_GPU)
        return None
    device = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = True
    b = sizes()
    run = store.BenchRun("gpu")   # provenance: the code that ran, read before it runs
    measured = run_modes(b, device)
    name, peak = peak_flops(device)
    rows = measured["rows"]
    ceiling = rows["ceiling"].get("tokens_per_s")
    for mode, r in rows.items():
        if "tokens_per_s" in r:
            r["flops_per_token"] = measured["flops_per_token"][mode]
            r["mfu"] = r["flops_per_token"] * r["tokens_per_s"] / peak if peak else None
            r["fraction_of_ceiling"] = r["tokens_per_s"] / ceiling if ceiling else None
    path, results = run.write({"device": name, "peak_bf16_flops": peak, "torch": torch.__version__,
                               "settings": asdict(b), "modes": rows, "targets": TARGETS, "verdict": verdict(rows)}, out)
    print(f"results written to {path}")
    print(f"{'mode':<28} {'tokens/s':>10} {'x ceiling':>10} {'peak GiB':>9} {'MFU':>6}")
    for mode, r in rows.items():
        if "error" in r:
            print(f"{mode:<28} {r['error']}")
            continue
        mfu = f"{r['mfu']:.0%}" if r.get("mfu") is not None else "n/a"
        print(f"{mode:<28} {r['tokens_per_s']:>10,.0f} {r['fraction_of_ceiling']:>10.2f} {r['peak_gib']:>9.2f} "
              f"{mfu:>6}")
    print("\n".join(results["verdict"]))
    return results
