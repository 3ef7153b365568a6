"""Checkers of the book's exercises (chapter 13.9), which the reader runs as experiments.

The reader trains the models; a checker never retrains. It re-evaluates the models the reader returns
with the library's metric on the chapter's own evaluation split, checks the design of the comparison
(the same budget for every arm, the right teacher for every student, the same split for every number),
and names the slip when the design is off. ``exercises`` re-exports them.
"""
from __future__ import annotations

import torch

from ..chapters import ch01_soft_labels as ch01
from ..chapters import ch04_self_distillation as ch04
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
