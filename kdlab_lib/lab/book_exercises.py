"""Checkers of the book's exercises (chapter 13.9), which the reader runs as experiments.

The reader trains the models; a checker never retrains. It re-evaluates the models the reader returns
with the library's metric on the chapter's own evaluation split, checks the design of the comparison
(the same budget for every arm, the right teacher for every student, the same split for every number),
and names the slip when the design is off. ``exercises`` re-exports them.
"""
from __future__ import annotations

import torch

from ..chapters import ch01_soft_labels as ch01
from ..chapters import ch03_gpt2 as ch03
from ..chapters import ch04_self_distillation as ch04
from ..chapters import ch05_staged as ch05
from ..core import metrics, store
from .verdicts import Verdict, _verdict, checker

GENERATIONS = 3   # the book's exercise 4: "Repeat for three generations" (after generation 0)


def _records(generations) -> list | Verdict:
    """Each model's ``kd_record`` (stamped by ``ch04.train_generation`` / ``ch04.distiller``), or a Verdict."""
    if not isinstance(generations, (list, tuple)) or not all(isinstance(m, torch.nn.Module) for m in generations):
        return _verdict(False, "pass the list of models [generation 0, generation 1, ...], each a torch module.")
    if len(generations) != GENERATIONS + 1:
        return _verdict(False, f"the book asks for {GENERATIONS} generations after generation 0 "
                               f"({GENERATIONS + 1} models); you passed {len(generations)}.")
    records = [getattr(m, "kd_record", None) for m in generations]
    if any(r is None for r in records):
        k = records.index(None)
        return _verdict(False, f"generation {k} was not trained by ch04.train_generation or the cell's distill: "
                               "train generation 0 with ch04.train_generation and the others with distill.")
    return records


def _design(generations, records) -> Verdict | None:
    """The slip in how the generations were made, or None when each is a fresh student of its predecessor."""
    if len({id(m) for m in generations}) < len(generations):
        return _verdict(False, "the same model appears twice: every generation is a fresh make_student(), not the "
                               "previous student trained again.", slip="one-student-reused")
    if records[0]["teacher"] is not None:
        return _verdict(False, "generation 0 learns from the labels (ch04.train_generation), not from a teacher.",
                        slip="generation-0-distilled")
    for k in range(1, len(generations)):
        teacher = records[k]["teacher"]
        if teacher is None:
            return _verdict(False, f"generation {k} learnt from the labels: born-again generations learn from the "
                                   f"generation before them.", slip="labels-not-teacher")
        if teacher is not generations[k - 1]:
            first = teacher is generations[0]
            return _verdict(False, f"generation {k} was distilled from "
                                   f"{'generation 0' if first else 'a model that is not generation ' + str(k - 1)}: "
                                   f"each generation learns from the one just before it.",
                            slip="distilled-from-first-teacher" if first else "not-a-chain")
    budgets = {(r["epochs"], r["n_train"]) for r in records}
    if len(budgets) > 1:
        return _verdict(False, f"the generations had different budgets (epochs, training digits): {sorted(budgets)}: "
                               "give every generation the same, or the comparison measures the budget.",
                        slip="unequal-budget")
    return None


@checker("book4_generations")
def check_generations(generations, my_errors) -> Verdict:
    """The book's exercise 4 on MNIST: ``generations`` = [generation 0, 1, 2, 3] (generation 0 from
    ``ch04.train_generation``, the others through the notebook's ``distill``), ``my_errors`` the test errors
    the reader computed for each. The checker re-counts each model's errors on ``ch04.test_split`` of the
    notebook's budget and checks the design (fresh students, each from the generation before, one budget)."""
    records = _records(generations)
    if isinstance(records, Verdict):
        return records
    wrong = _design(generations, records)
    if wrong is not None:
        return wrong
    test = ch04.test_split(ch04.notebook_budget())
    ours = [metrics.error_count(metrics.predict(m, test), test.tensors[1]) for m in generations]
    try:
        mine = [int(e) for e in my_errors]
    except (TypeError, ValueError):
        return _verdict(False, "my_errors should be one number of test errors per generation.")
    if mine != ours:
        return _verdict(False, f"your error counts {mine} are not the test split's {ours} (of {len(test):,} test "
                               f"digits): count with metrics.error_count on test_set.", slip="other-split")
    trend = " → ".join(str(e) for e in ours)
    return _verdict(True, f"four generations, each a fresh student of the one before, one budget; test errors "
                          f"{trend}. Section 5 shows the same on three seeds.")


def _sweep_design(students: dict) -> Verdict | list | None:
    """The temperatures of a sweep ``{T: model}`` in order, or the Verdict that names what is off."""
    if not isinstance(students, dict) or not students:
        return _verdict(False, "pass your students as a dict {T: model}, one per temperature you trained.")
    records = {}
    for t, model in students.items():
        record = getattr(model, "kd_record", None)
        if not isinstance(model, torch.nn.Module) or record is None or "temperature" not in record:
            return _verdict(False, f"the student for T = {t} was not trained by ch01.train_distilled: train every "
                                   "student with it, so the checker can read how.")
        records[float(t)] = record
    if len(records) < 3 or 1.0 not in records:
        return _verdict(False, f"sweep at least three temperatures, T = 1 among them (the book: "
                               f"{', '.join(f'{t:g}' for t in ch01.BOOK_TEMPERATURES)}); you have {sorted(records)}.")
    for t, r in records.items():
        if r["temperature"] != t:
            return _verdict(False, f"the student under T = {t:g} was trained at T = {r['temperature']:g}: "
                                   f"pass temperature=T to each run.", slip="mislabelled-T")
    if len({r["seed"] for r in records.values()}) > 1:
        return _verdict(False, "your students have different seeds: at one seed per T, a different seed changes "
                               "the result as much as T does (chapter 01, section 5). Use one seed for all.",
                        slip="different-seeds")
    shared = ("alpha", "epochs", "n_train", "hidden")
    if len({tuple(r[k] for k in shared) for r in records.values()}) > 1:
        return _verdict(False, "your students differ in more than T (alpha, epochs, digits or size): change only "
                               "T, or the sweep measures something else.", slip="unequal-budget")
    return sorted(records)


@checker("book3_temperature_sweep")
def check_temperature_sweep(students, my_errors, my_best_T) -> Verdict:
    """The book's exercise 3 on MNIST: ``students`` ``{T: model}`` (each from ``ch01.train_distilled``),
    ``my_errors`` ``{T: test errors}`` the reader counted, ``my_best_T`` the T the reader reads off their own
    sweep. The checker re-counts each student's errors on ``ch01.test_set`` of the sweep's budget, checks that
    only T changed, that the best T is the sweep's minimum, and puts ``kdlab bench mnist --only
    temperature_exercise``'s five seeds beside the one the reader ran."""
    temps = _sweep_design(students)
    if isinstance(temps, Verdict):
        return temps
    b = ch01.sweep_budget()
    ours = {t: ch01.test_errors(students[t], b) for t in temps}
    try:
        mine = {float(t): int(e) for t, e in my_errors.items()}
    except (AttributeError, TypeError, ValueError):
        return _verdict(False, "my_errors should be a dict {T: test errors}, one per student.")
    if mine != ours:
        return _verdict(False, f"your error counts {mine} are not the test split's {ours} (of {b.n_test:,} test "
                               f"digits): count with ch01.test_errors(student, b_sweep).", slip="other-split")
    best = min(ours.values())
    try:
        pick = float(my_best_T)
    except (TypeError, ValueError):
        return _verdict(False, "set my_best_T to the temperature with the fewest errors in your sweep.")
    if ours.get(pick) != best:
        return _verdict(False, f"in your sweep T = {pick:g} is not the best: "
                               f"{', '.join(f'T = {t:g}: {e}' for t, e in ours.items())}.")
    bench = store.read_results("mnist").get("temperature_exercise")
    beside = ""
    if bench:
        means = {float(t): v["mean"] for t, v in bench["per_temperature"].items()}
        seeds = bench["best_temperature_per_seed"]
        beside = (f" kdlab bench over {len(seeds)} seeds: best T per seed {', '.join(f'{t:g}' for t in seeds)}; "
                  f"mean errors {', '.join(f'T = {t:g}: {m:.1f}' for t, m in means.items())}.")
    return _verdict(True, f"only T changed, your counts are the test split's, and T = {pick:g} is your sweep's "
                          f"best ({best} errors).{beside}")


def _staging_design(teacher, direct, assistant, staged) -> Verdict | None:
    """The slip in how the one-step and two-step students were made, or None when the design is sound."""
    arms = {"direct": direct, "assistant": assistant, "staged": staged}
    if all(m is None for m in arms.values()):
        return _verdict(False, "run your experiment: direct = distill(make_student(), teacher), then assistant, "
                               "staged = my_chain(teacher, make_assistant, make_student, distill).")
    for name, model in arms.items():
        if not isinstance(model, torch.nn.Module) or getattr(model, "kd_record", None) is None:
            return _verdict(False, f"`{name}` was not trained by the cell's distill: make it with make_student() "
                                   f"or make_assistant() and train it with distill(model, its_teacher).")
    if len({id(m) for m in arms.values()}) < 3:
        return _verdict(False, "the same model appears twice: the direct and the staged student are two fresh "
                               "make_student() models, the assistant a make_assistant().", slip="student-reused")
    rec = {name: m.kd_record for name, m in arms.items()}
    if rec["direct"]["teacher"] is not teacher:
        return _verdict(False, "the one-step student did not learn from the teacher: one step is teacher → student.",
                        slip="direct-not-from-teacher")
    if rec["assistant"]["teacher"] is not teacher:
        return _verdict(False, "the assistant did not learn from the teacher.", slip="assistant-not-from-teacher")
    if rec["staged"]["teacher"] is not assistant:
        first = rec["staged"]["teacher"] is teacher
        return _verdict(False, "the two-step student learned from " + ("the teacher: then it is a second direct "
                               "student, not a chain." if first else "a model that is not your assistant."),
                        slip="student-from-teacher" if first else "not-a-chain")
    starts = {name: r["start"] for name, r in rec.items()}
    if starts["direct"] != starts["staged"]:
        return _verdict(False, f"the direct and the staged student start differently {starts['direct']} vs "
                               f"{starts['staged']}: use one make_student for both, so only the teacher differs.",
                        slip="different-starts")
    if starts["assistant"] is None or starts["direct"] is None or starts["assistant"][0] <= starts["direct"][0]:
        return _verdict(False, "the assistant is not wider than the student: a teaching assistant sits between "
                               "the teacher and the student in size.", slip="assistant-not-between")
    shared = ("temperature", "epochs", "n_train", "seed")
    if len({tuple(r[k] for k in shared) for r in rec.values()}) > 1:
        return _verdict(False, "your three models were trained differently (T, epochs, digits or batches): use "
                               "one distill for all, or the comparison measures the budget.", slip="unequal-budget")
    return None


@checker("book5_staging")
def check_staging(teacher, direct, assistant, staged, my_errors) -> Verdict:
    """The book's exercise 5 on MNIST: ``direct`` (teacher → 10-10), ``assistant`` and ``staged`` (teacher →
    assistant → 10-10), each from the notebook's ``make_student`` / ``make_assistant`` and ``distill``;
    ``my_errors`` ``{"direct", "assistant", "staged": test errors}`` the reader counted. The checker re-counts
    each model's errors on ``ch05.test_set`` of the live budget, checks the design (one start and one budget
    for both students, the staged student taught only by the assistant) and puts ``kdlab bench staged --only
    staging_check``'s five seeds at the reader's T beside the one the reader ran."""
    wrong = _staging_design(teacher, direct, assistant, staged)
    if wrong is not None:
        return wrong
    test = ch05.test_set(ch05.live_budget())
    ours = {name: ch05.errors(m, test) for name, m in (("direct", direct), ("assistant", assistant),
                                                           ("staged", staged))}
    try:
        mine = {k: int(my_errors[k]) for k in ours}
    except (KeyError, TypeError, ValueError):
        return _verdict(False, 'my_errors should be {"direct": ..., "assistant": ..., "staged": ...}: the test '
                               "errors of each model.")
    if mine != ours:
        return _verdict(False, f"your error counts {mine} are not the test split's {ours} (of {len(test):,} test "
                               f"digits): count with ch05.errors(model, test).", slip="other-split")
    t, w = direct.kd_record["temperature"], assistant.kd_start[0]
    said = ("fewer test errors than" if ours["staged"] < ours["direct"] else
            "more test errors than" if ours["staged"] > ours["direct"] else "as many test errors as")
    beside = ""
    bench = store.read_results("staged").get("staging_check")
    row = bench and bench["summary"].get(f"{t:g}")
    if row and str(w) in row["staged"]:
        n = len(bench["seeds"])
        beside = (f" kdlab bench over {n} seeds at T = {t:g}: direct {row['direct']['mean']:.1f}, through "
                  f"{w}-{w} {row['staged'][str(w)]['mean']:.1f}; the chain won on {row['staged_wins'][str(w)]} of "
                  f"{n} seeds.")
    return _verdict(True, f"one start, one budget, the staged student taught only by the {w}-{w} assistant; at "
                          f"T = {t:g} two steps made {said} one ({ours['staged']} against "
                          f"{ours['direct']}).{beside}")


def _held_out_perplexity(students: dict, my_perplexity) -> dict | Verdict:
    """Each student's perplexity on chapter 03's held-out blocks (``ch03.val_split`` of the exercise budget), or
    the Verdict that says the reader's ``my_perplexity`` is not it (within 0.1%)."""
    val = ch03.val_split(ch03.exercise_budget())
    ours = {arm: metrics.perplexity(m, val) for arm, m in students.items()}
    try:
        mine = {arm: float(my_perplexity[arm]) for arm in ours}
    except (KeyError, TypeError, ValueError):
        return _verdict(False, f"my_perplexity should be {{student: held-out perplexity}} for {list(ours)}.")
    off = [a for a in ours if abs(mine[a] - ours[a]) > 1e-3 * ours[a]]
    if off:
        return _verdict(False, f"your perplexity of {off[0]!r}, {mine[off[0]]:.2f}, is not the held-out blocks' "
                               f"{ours[off[0]]:.2f}: use metrics.perplexity(model, val_blocks).", slip="other-split")
    return ours


ARM_DESIGN = {  # arm -> (start it must have, taught by the teacher?)
    "scratch": ("random", False), "fine-tuned": ("pretrained", False), "distilled": ("random", True),
    ch03.BOTH: ("pretrained", True)}
ARM_SLIPS = {  # (arm, what is wrong) -> slip
    ("scratch", "start"): "scratch-pretrained", ("scratch", "teacher"): "scratch-distilled",
    ("fine-tuned", "start"): "fine-tuned-from-random", ("fine-tuned", "teacher"): "fine-tuned-distilled",
    ("distilled", "start"): "distilled-pretrained", ("distilled", "teacher"): "distilled-from-labels",
    (ch03.BOTH, "start"): "both-from-random", (ch03.BOTH, "teacher"): "both-from-labels"}


def _alternatives_design(students) -> Verdict | None:
    """The slip in how the book's exercise 1 students were made, or None when the design is sound."""
    if not isinstance(students, dict) or not students:
        return _verdict(False, 'run your experiment: students = {"scratch": train_on_text(make_student()), '
                               '"fine-tuned": ..., "distilled": ...}.')
    missing = [a for a in ch03.EXERCISE_ARMS if a not in students]
    extra = [a for a in students if a not in ARM_DESIGN]
    if missing or extra:
        return _verdict(False, f"students needs the keys {list(ch03.EXERCISE_ARMS)} (and, if you like, "
                               f"{ch03.BOTH!r}); " + (f"missing {missing}" if missing else f"unknown {extra}") + ".")
    for arm, model in students.items():
        if not isinstance(model, torch.nn.Module) or getattr(model, "kd_record", None) is None:
            return _verdict(False, f"the {arm!r} student was not trained by the cell's train_on_text or distill.")
    if len({id(m) for m in students.values()}) < len(students):
        return _verdict(False, "the same model appears twice: every student is a fresh make_student() or "
                               "load_pretrained().", slip="student-reused")
    for arm, model in students.items():
        r, (start, taught) = model.kd_record, ARM_DESIGN[arm]
        if r["trained_before"]:
            return _verdict(False, f"the {arm!r} student was trained twice: each student gets one budget.",
                            slip="trained-twice")
        if (r["start"] or ("?",))[0] != start:
            return _verdict(False, f"the {arm!r} student should start from "
                                   f"{'make_student()' if start == 'random' else 'load_pretrained()'}.",
                            slip=ARM_SLIPS[arm, "start"])
        if (r["teacher"] is not None) != taught:
            return _verdict(False, f"the {arm!r} student should be trained with "
                                   f"{'distill' if taught else 'train_on_text'}.", slip=ARM_SLIPS[arm, "teacher"])
    if students["scratch"].kd_record["start"] != students["distilled"].kd_record["start"]:
        return _verdict(False, "the scratch and the distilled student start from different random weights: use "
                               "one make_student for both, so only what they learn from differs.",
                        slip="different-starts")
    shared = ("steps", "batch_size", "seed")
    if len({tuple(m.kd_record[k] for k in shared) for m in students.values()}) > 1:
        return _verdict(False, "your students had different budgets (steps, batch or seed): use the cell's "
                               "train_on_text and distill for all, or the comparison measures the budget.",
                        slip="unequal-budget")
    return None


@checker("book1_alternatives")
def check_alternatives(students, my_perplexity) -> Verdict:
    """The book's exercise 1 on chapter 03's GPT-2 family: ``students`` ``{"scratch", "fine-tuned",
    "distilled"[, "pretrained, then distilled"]: model}`` made with the notebook's ``make_student`` /
    ``load_pretrained`` and ``train_on_text`` / ``distill``; ``my_perplexity`` the reader's held-out perplexity
    of each. The checker re-computes each on ``ch03.val_split`` of the exercise budget, checks the design (one
    random start for scratch and distilled, the pretrained start for fine-tuned, one budget) and puts ``kdlab
    bench gpt2 --only alternatives_exercise``'s five seeds beside the reader's one."""
    wrong = _alternatives_design(students)
    if wrong is not None:
        return wrong
    ours = _held_out_perplexity(students, my_perplexity)
    if isinstance(ours, Verdict):
        return ours
    order = " < ".join(f"{a} {ours[a]:.1f}" for a in sorted(ours, key=ours.get))
    beside = ""
    bench = store.read_results("gpt2").get("alternatives_exercise")
    if bench:
        n, p = len(bench["seeds"]), bench["perplexity"]
        beside = (f" kdlab bench over {n} seeds: " + ", ".join(f"{a} {p[a]['mean']:.1f}" for a in p) +
                  f"; distilled beat scratch on {bench['distilled_beats']['scratch']} of {n} seeds, fine-tuned on "
                  f"{bench['distilled_beats']['fine-tuned']}.")
    return _verdict(True, f"one random start for scratch and distilled, the pretrained start for fine-tuning, one "
                          f"budget; held-out perplexity {order}.{beside}")


def _written_design(students) -> Verdict | None:
    """The slip in how the book's exercise 2 students were made, or None when the design is sound."""
    if not isinstance(students, dict) or not students:
        return _verdict(False, 'run your experiment: students = {"human-written": train_on(make_student(), '
                               'human_text), "teacher-written": train_on(make_student(), written)}.')
    if sorted(students) != sorted(ch03.WRITTEN_ARMS):
        return _verdict(False, f"students needs exactly the keys {list(ch03.WRITTEN_ARMS)}; you have {list(students)}.")
    for arm, model in students.items():
        if not isinstance(model, torch.nn.Module) or getattr(model, "kd_record", None) is None:
            return _verdict(False, f"the {arm!r} student was not trained by the cell's train_on.")
    human, written = (students[a] for a in ch03.WRITTEN_ARMS)
    if human is written:
        return _verdict(False, "the same model appears twice: each student is a fresh make_student().",
                        slip="student-reused")
    rh, rw = human.kd_record, written.kd_record
    if rh["trained_before"] or rw["trained_before"]:
        return _verdict(False, "a student was trained twice: each gets one budget.", slip="trained-twice")
    if ch03.is_teacher_written(rh["blocks"]):
        return _verdict(False, "the human-written student learnt from the teacher's text.",
                        slip="human-on-teacher-text")
    if not ch03.is_teacher_written(rw["blocks"]):
        return _verdict(False, "the teacher-written student did not learn from ch03.teacher_text's blocks.",
                        slip="teacher-arm-on-human-text")
    if rh["start"] != rw["start"]:
        return _verdict(False, "the two students start from different weights: use one make_student for both.",
                        slip="different-starts")
    if rh["n_blocks"] != rw["n_blocks"]:
        return _verdict(False, f"the two texts differ in size ({rh['n_blocks']:,} human blocks, {rw['n_blocks']:,} "
                               "teacher blocks): the book compares equal amounts of text.", slip="unequal-data")
    if (rh["steps"], rh["batch_size"], rh["seed"]) != (rw["steps"], rw["batch_size"], rw["seed"]):
        return _verdict(False, "the two students had different budgets: use one train_on for both.",
                        slip="unequal-budget")
    return None


@checker("book2_written")
def check_written(students, my_perplexity) -> Verdict:
    """The book's exercise 2 on notebook 03b: ``students`` ``{"human-written", "teacher-written": model}``, each
    ``train_on(make_student(), blocks)`` on N blocks of the plays or N blocks from ``ch03.teacher_text``;
    ``my_perplexity`` the reader's held-out perplexity of each. The checker re-computes both on
    ``ch03.val_split``, checks the design (one start, equal text, one budget) and puts ``kdlab bench gpt2-beyond
    --only written_exercise``'s five seeds beside the reader's one."""
    wrong = _written_design(students)
    if wrong is not None:
        return wrong
    ours = _held_out_perplexity(students, my_perplexity)
    if isinstance(ours, Verdict):
        return ours
    h, w = ours["human-written"], ours["teacher-written"]
    beside = ""
    bench = store.read_results("gpt2-beyond").get("written_exercise")
    if bench:
        n, p = len(bench["seeds"]), bench["perplexity"]
        beside = (f" kdlab bench over {n} seeds: human-written {p['human-written']['mean']:.1f}, teacher-written "
                  f"{p['teacher-written']['mean']:.1f}; teacher-written won on {bench['teacher_written_wins']} of "
                  f"{n} seeds.")
    return _verdict(True, f"one start, equal text, one budget; held-out perplexity {h:.1f} after human-written "
                          f"text, {w:.1f} after teacher-written text.{beside}")
