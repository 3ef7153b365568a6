"""Checkers of the book's exercises (chapter 13.9), which the reader runs as experiments.

The reader trains the models; a checker never retrains. It re-evaluates the models the reader returns
with the library's metric on the chapter's own evaluation split, checks the design of the comparison
(the same budget for every arm, the right teacher for every student, the same split for every number),
and names the slip when the design is off. ``exercises`` re-exports them.
"""
from __future__ import annotations

import torch

from ..chapters import ch04_self_distillation as ch04
from ..core import metrics
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
