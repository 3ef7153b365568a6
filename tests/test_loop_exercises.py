"""The loop exercises' checkers, proven both ways: a reader's correct loop passes, and each classic slip,
written the way a reader would write it, is named (``Verdict.slip``) with a message that says what to fix.
The correct loops below are the reference solutions (the notebooks' solutions use the same ones)."""
from __future__ import annotations

from functools import partial

import pytest
import torch
import torch.nn.functional as F

from kdlab_lib import exercises, train, train_text
from kdlab_lib.chapters import ch04_self_distillation as ch04


def assert_slip(v, slip: str, *words: str):
    assert not v.ok and v.slip == slip, str(v)
    assert str(v).startswith("Not yet: ") and all(w in v.message for w in words), str(v)


def assert_not_yet(check, fn, words: str):
    v = check(fn)
    assert not v.ok and v.slip is None and words in v.message, str(v)


# ------------------------------------------------------------------ chapter 01: one epoch

def hinton(s, t, y, T, alpha):
    soft = F.kl_div(F.log_softmax(s / T, dim=-1), F.softmax(t / T, dim=-1), reduction="batchmean")
    return alpha * F.cross_entropy(s, y) + (1 - alpha) * T * T * soft


def my_epoch(student, teacher, loader, optimizer, T, alpha, *, loss_fn=hinton, eval_teacher=True,
             no_grad=True, zero_grad=True, step=True, weighted=True, item=True):
    """The reference solution (every keyword at its default); each keyword turns one slip on."""
    if eval_teacher:
        teacher.eval()
    student.train()
    total, count, per_batch = 0.0, 0, []
    for x, y in loader:
        with torch.set_grad_enabled(not no_grad):
            t_logits = teacher(x)
        loss = loss_fn(student(x), t_logits, y, T, alpha)
        if zero_grad:
            optimizer.zero_grad()
        loss.backward()
        if step:
            optimizer.step()
        total = total + (loss.item() if item else loss) * len(y)
        count += len(y)
        per_batch.append(loss.item())
    return total / count if weighted else sum(per_batch) / len(per_batch)


def kl_(p_log, q, reduction="batchmean"):
    return F.kl_div(p_log, q, reduction=reduction)


EPOCH_SLIPS = {   # slip: (how the reader's loop differs, words its message must hold)
    "teacher-train-mode": (dict(eval_teacher=False), "teacher.eval()"),
    "teacher-with-grad": (dict(no_grad=False), "torch.no_grad()"),
    "no-zero-grad": (dict(zero_grad=False), "optimizer.zero_grad()"),
    "missing-T2": (dict(loss_fn=lambda s, t, y, T, a: a * F.cross_entropy(s, y) + (1 - a) * kl_(
        F.log_softmax(s / T, -1), F.softmax(t / T, -1))), "1/T²"),
    "reversed-kl": (dict(loss_fn=lambda s, t, y, T, a: a * F.cross_entropy(s, y) + (1 - a) * T * T * kl_(
        F.log_softmax(t / T, -1), F.softmax(s / T, -1))), "KL(p_T || p_S)"),
    "softmax-over-batch": (dict(loss_fn=lambda s, t, y, T, a: a * F.cross_entropy(s, y) + (1 - a) * T * T * kl_(
        F.log_softmax(s / T, 0), F.softmax(t / T, 0))), "dim=-1"),
    "alpha-swapped": (dict(loss_fn=lambda s, t, y, T, a: hinton(s, t, y, T, 1 - a)), "70%"),
    "batch-mean": (dict(weighted=False), "len(y)"),
    "kept-graph": (dict(item=False), "loss.item()"),
    "no-step": (dict(step=False), "optimizer.step()"),
}


def test_a_correct_epoch_passes_and_so_does_the_library_s():
    for fn in (my_epoch, train.distill_epoch):
        v = exercises.check_distill_epoch(fn)
        assert v.ok and v.slip is None and v.exercise == "distill_epoch", str(v)


@pytest.mark.parametrize("slip", EPOCH_SLIPS)
def test_each_slip_in_an_epoch_is_named_and_explained(slip):
    changes, words = EPOCH_SLIPS[slip]
    assert_slip(exercises.check_distill_epoch(partial(my_epoch, **changes)), slip, words)


def test_the_epoch_checker_says_not_yet_to_a_placeholder_a_crash_or_a_non_number():
    assert_not_yet(exercises.check_distill_epoch, lambda *a: None, "returned None")
    assert_not_yet(exercises.check_distill_epoch, lambda *a: 1 / 0, "raised ZeroDivisionError")
    assert_not_yet(exercises.check_distill_epoch, lambda *a: "0.5", "not a str")
    assert_not_yet(exercises.check_distill_epoch, lambda *a: [0.5], "not a list")
    v = exercises.check_distill_epoch(lambda s, t, loader, opt, T, a: my_epoch(s, t, loader, opt, T, a) + 1.0)
    assert not v.ok and v.slip is None and "weights match" in v.message


def test_a_loop_checker_leaves_the_reader_s_random_state_alone():
    torch.manual_seed(7)
    state = torch.get_rng_state()
    exercises.check_distill_epoch(my_epoch)
    assert torch.equal(torch.get_rng_state(), state)


# ------------------------------------------------------------------ chapter 03: one token-level step

def my_token_step(student, teacher, input_ids, attention_mask, optimizer, T, alpha, *, eval_teacher=True,
                  no_grad=True, shift=True, counted="next", kl_reduction="batchmean"):
    """The reference solution (every keyword at its default); each keyword turns one slip on."""
    teacher.train(not eval_teacher)
    student.train()
    with torch.set_grad_enabled(not no_grad):
        t_logits = teacher(input_ids=input_ids, attention_mask=attention_mask).logits   # (B, S, V)
    s_logits = student(input_ids=input_ids, attention_mask=attention_mask).logits       # (B, S, V)
    if shift:
        s_logits, t_logits, targets = s_logits[:, :-1], t_logits[:, :-1], input_ids[:, 1:]
    else:
        targets = input_ids
    mask = {"next": attention_mask[:, 1:], "same": attention_mask[:, :-1], "all": torch.ones_like(targets)}
    m = (mask[counted] if shift else attention_mask).bool()
    soft = F.kl_div(F.log_softmax(s_logits[m] / T, -1), F.softmax(t_logits[m] / T, -1), reduction=kl_reduction)
    loss = alpha * F.cross_entropy(s_logits[m], targets[m]) + (1 - alpha) * T * T * soft
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.item()


TOKEN_SLIPS = {   # slip: (how the reader's step differs, words its message must hold)
    "teacher-train-mode": (dict(eval_teacher=False), "teacher.eval()"),
    "teacher-with-grad": (dict(no_grad=False), "torch.no_grad()"),
    "padding-counted": (dict(counted="all"), "attention_mask[:, 1:]"),
    "mask-not-shifted": (dict(counted="same"), "token t+1 is real"),
    "not-shifted": (dict(shift=False), "input_ids[:, 1:]"),
    "mean-over-vocab": (dict(kl_reduction="mean"), "sum over the vocabulary"),
}


def test_a_correct_token_step_passes_and_so_does_the_library_s():
    for fn in (my_token_step, train_text.token_kd_step):
        v = exercises.check_token_kd_step(fn)
        assert v.ok and v.slip is None and v.exercise == "token_kd_step", str(v)


@pytest.mark.filterwarnings("ignore:reduction. 'mean' divides")   # the slip F.kl_div warns about
def test_each_slip_in_a_token_step_is_named_and_explained():
    for slip, (changes, words) in TOKEN_SLIPS.items():
        assert_slip(exercises.check_token_kd_step(partial(my_token_step, **changes)), slip, words)


def test_the_token_step_checker_says_not_yet_to_a_placeholder_a_crash_or_a_non_number():
    assert_not_yet(exercises.check_token_kd_step, lambda *a: None, "returned None")
    assert_not_yet(exercises.check_token_kd_step, lambda *a: {}["x"], "raised KeyError")
    assert_not_yet(exercises.check_token_kd_step, lambda *a: (1.0,), "not a tuple")


# ------------------------------------------------------------------ chapter 02: one triple-loss step

def my_triple_step(student, teacher, batch, optimizer, T, weights, *, eval_teacher=True, no_grad=True,
                   soft_over="real", cos_over="real", mlm_at_T=False, t_squared=True):
    """The reference solution (every keyword at its default); each keyword turns one slip on."""
    w_soft, w_mlm, w_cos = weights
    teacher.train(not eval_teacher)
    student.train()
    x, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    with torch.set_grad_enabled(not no_grad):
        t = teacher(input_ids=x, attention_mask=mask, output_hidden_states=True)
    s = student(input_ids=x, attention_mask=mask, output_hidden_states=True)
    where = {"real": mask.bool(), "all": torch.ones_like(mask, dtype=torch.bool), "masked": labels != -100}
    ks, kt = s.logits[where[soft_over]], t.logits[where[soft_over]]                  # (N, V)
    soft = F.kl_div(F.log_softmax(ks / T, -1), F.softmax(kt / T, -1), reduction="batchmean")
    soft = soft * T * T if t_squared else soft
    mlm = F.cross_entropy((s.logits / T if mlm_at_T else s.logits).flatten(0, 1), labels.flatten())
    hs, ht = s.hidden_states[-1][where[cos_over]], t.hidden_states[-1][where[cos_over]]   # (N, H)
    cos = (1 - F.cosine_similarity(hs, ht, dim=-1)).mean()
    loss = w_soft * soft + w_mlm * mlm + w_cos * cos
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return {"soft": soft.item(), "mlm": mlm.item(), "cos": cos.item(), "loss": loss.item()}


TRIPLE_SLIPS = {   # slip: (how the reader's step differs, words its message must hold)
    "teacher-train-mode": (dict(eval_teacher=False), "dropout"),
    "teacher-with-grad": (dict(no_grad=False), ".grad"),
    "soft-over-padding": (dict(soft_over="all"), "real tokens"),
    "soft-only-masked": (dict(soft_over="masked"), "every real token"),
    "cos-over-padding": (dict(cos_over="all"), "real tokens"),
    "T-on-mlm": (dict(mlm_at_T=True), "T = 1"),
    "missing-T2": (dict(t_squared=False), "T²"),
}


def test_a_correct_triple_step_passes_and_so_does_the_library_s():
    for fn in (my_triple_step, train_text.triple_loss_step):
        v = exercises.check_triple_loss_step(fn)
        assert v.ok and v.slip is None and v.exercise == "triple_loss_step", str(v)


def test_each_slip_in_a_triple_step_is_named_and_explained():
    for slip, (changes, words) in TRIPLE_SLIPS.items():
        assert_slip(exercises.check_triple_loss_step(partial(my_triple_step, **changes)), slip, words)


def test_the_triple_step_checker_wants_the_three_terms_and_the_total():
    assert_not_yet(exercises.check_triple_loss_step, lambda *a: None, "returned None")
    assert_not_yet(exercises.check_triple_loss_step, lambda *a: 1 / 0, "raised ZeroDivisionError")
    assert_not_yet(exercises.check_triple_loss_step, lambda *a: 3.0, "got float")
    assert_not_yet(exercises.check_triple_loss_step, lambda *a: {"soft": 1.0, "total": 2.0}, "['soft', 'total']")
    wrong = {"soft": 1.0, "mlm": 1.0, "cos": 1.0, "loss": "x"}
    assert_not_yet(exercises.check_triple_loss_step, lambda *a: wrong, "should be a number")


def test_the_replayed_slips_start_from_the_reference():
    from kdlab_lib.lab import loop_exercises as loops
    assert exercises.check_distill_epoch(loops._distill_epoch_with(None)).ok
    assert exercises.check_token_kd_step(loops._token_step_with(None)).ok
    assert exercises.check_triple_loss_step(loops._triple_step_with(None)).ok


# ------------------------------------------------------------------ chapter 04: born-again generations

my_born_again = ch04.born_again_loop   # a right answer: the chapter's reference loop


def born_again_from_the_teacher(teacher, make_student, distill, generations):
    students = [make_student() for _ in range(generations)]
    for s in students:
        distill(s, teacher)
    return students


def born_again_one_student(teacher, make_student, distill, generations):
    student, previous = make_student(), teacher
    for _ in range(generations):
        distill(student, previous)
        previous = student
    return [student] * generations


def born_again_off_by_one(teacher, make_student, distill, generations):
    return my_born_again(teacher, make_student, distill, generations - 1)


def born_again_with_the_teacher_in_front(teacher, make_student, distill, generations):
    return [teacher, *my_born_again(teacher, make_student, distill, generations)]


def born_again_three(teacher, make_student, distill, generations):
    return my_born_again(teacher, make_student, distill, 3)


def born_again_swapped(teacher, make_student, distill, generations):
    previous, out = teacher, []
    for _ in range(generations):
        out.append(make_student())
        distill(previous, out[-1])
        previous = out[-1]
    return out


def born_again_using_the_return(teacher, make_student, distill, generations):
    out = []
    for _ in range(generations):
        out.append(distill(make_student(), out[-1] if out else teacher))
    return out


def test_born_again_checker():
    for fn in (my_born_again, born_again_using_the_return):
        v = exercises.check_born_again(fn)
        assert v.ok and v.slip is None and v.exercise == "born_again", str(v)
    assert_slip(exercises.check_born_again(born_again_from_the_teacher), "all-from-first-teacher", "k-1")
    assert_slip(exercises.check_born_again(born_again_one_student), "student-reused", "make_student()")
    assert_slip(exercises.check_born_again(born_again_off_by_one), "wrong-generations", "3 generations")
    assert_slip(exercises.check_born_again(born_again_three), "wrong-generations", "2 generations")
    assert_slip(exercises.check_born_again(born_again_with_the_teacher_in_front), "wrong-return",
                "[student 1, student 2, student 3]", "the teacher")
    assert_slip(exercises.check_born_again(lambda t, m, d, g: my_born_again(t, m, d, g)[::-1]), "wrong-return")
    assert_slip(exercises.check_born_again(born_again_swapped), "arguments-swapped", "student first")
    assert_slip(exercises.check_born_again(lambda t, m, d, g: [m() for _ in range(g)]), "never-trained")
    assert_not_yet(exercises.check_born_again, lambda *a: None, "returned None")
    assert_not_yet(exercises.check_born_again, lambda *a: 1 / 0, "raised ZeroDivisionError")


# ------------------------------------------------------------------ chapter 05: a teacher-assistant chain

def my_chain(teacher, make_assistant, make_student, distill):
    assistant = make_assistant()
    distill(assistant, teacher)
    student = make_student()
    distill(student, assistant)
    return assistant, student


def chain_from_the_teacher(teacher, make_assistant, make_student, distill):
    assistant, student = make_assistant(), make_student()
    distill(assistant, teacher)
    distill(student, teacher)
    return assistant, student


def chain_untrained_assistant(teacher, make_assistant, make_student, distill):
    assistant, student = make_assistant(), make_student()
    distill(student, assistant)
    return assistant, student


def chain_backwards(teacher, make_assistant, make_student, distill):
    assistant, student = make_assistant(), make_student()
    distill(student, assistant)
    distill(assistant, teacher)
    return assistant, student


def test_chain_checker():
    v = exercises.check_chain(my_chain)
    assert v.ok and v.slip is None and v.exercise == "chain", str(v)
    assert_slip(exercises.check_chain(chain_from_the_teacher), "student-from-teacher", "assistant")
    assert_slip(exercises.check_chain(chain_untrained_assistant), "assistant-untrained", "never trained")
    assert_slip(exercises.check_chain(chain_backwards), "student-before-assistant", "train the assistant first")
    assert_slip(exercises.check_chain(lambda *a: my_chain(*a)[::-1]), "wrong-return", "(assistant, student)")
    assert_slip(exercises.check_chain(lambda t, ma, ms, d: (d(t, ma()), ms())), "arguments-swapped")
    assert_slip(exercises.check_chain(lambda t, ma, ms, d: (d(ma(), t), ms())), "student-untrained")
    assert_not_yet(exercises.check_chain, lambda *a: None, "returned None")
    assert_not_yet(exercises.check_chain, lambda *a: 1 / 0, "raised ZeroDivisionError")


def test_every_loop_checker_logs_its_slip_for_kdlab_grade(tmp_path, monkeypatch):
    import json
    log = tmp_path / "grade.jsonl"
    monkeypatch.setenv(exercises.GRADE_LOG, str(log))
    exercises.check_chain(chain_from_the_teacher)
    exercises.check_born_again(my_born_again)
    assert [json.loads(x) for x in log.read_text().splitlines()] == [
        {"exercise": "chain", "ok": False, "slip": "student-from-teacher"},
        {"exercise": "born_again", "ok": True, "slip": None}]
