"""The book's exercise 4 (three born-again generations), run by the reader: ``check_generations`` re-counts the
errors of the models it is given and checks the design; the reader's generations equal ``born_again``'s."""
from dataclasses import replace

import pytest
import torch

from kdlab_lib import config, datasets, exercises, metrics
from kdlab_lib.chapters import ch04_self_distillation as ch04


def loop(teacher, make_student, distill, generations):   # the solution of the loop exercise
    students = []
    for _ in range(generations):
        student = make_student()
        distill(student, students[-1] if students else teacher)
        students.append(student)
    return students


@pytest.fixture(scope="module")
def setup():
    assert config.QUICK
    b = replace(ch04.notebook_budget(), hidden=(16,), n_train=300)
    train_set = datasets.take(datasets.load_mnist("train"), b.n_train, seed=0)
    test = ch04.test_split(ch04.notebook_budget())
    gen0 = ch04.train_generation(b, train_set, seed=0, progress=False)
    gens = [gen0, *loop(gen0, ch04.student_maker(b), ch04.distiller(b, train_set, progress=False), 3)]
    errors = [metrics.error_count(metrics.predict(m, test), test.tensors[1]) for m in gens]
    return {"b": b, "train": train_set, "test": test, "gens": gens, "errors": errors}


def test_the_right_experiment_passes_and_the_library_reproduces_it(setup):
    v = exercises.check_generations(setup["gens"], setup["errors"])
    assert v and v.exercise == "book4_generations" and v.slip is None
    assert " → ".join(map(str, setup["errors"])) in v.message
    b4 = replace(setup["b"], generations=4)   # born_again seeds generation k and its batches as the helpers do
    lib = ch04.born_again(b4, seed=0, data=setup["train"], test=setup["test"], progress=False)
    assert [r["test_errors"] for r in lib["rows"]] == setup["errors"]
    mine = ch04.score_generations(setup["gens"], setup["test"])
    assert mine["rows"] == [{k: v for k, v in r.items() if k != "seconds"} for r in lib["rows"]]


def _slip(gens, errors):
    v = exercises.check_generations(gens, errors)
    assert not v
    return v.slip


def test_each_design_slip_is_named(setup):
    b, data, gens, errors = setup["b"], setup["train"], setup["gens"], setup["errors"]
    g0, g1 = gens[0], gens[1]
    distill = ch04.distiller(b, data, progress=False)
    make = ch04.student_maker(b)
    assert _slip([g0, g1, g1, g1], errors) == "one-student-reused"
    from_first = [g0, *[distill(make(), g0) for _ in range(3)]]
    assert _slip(from_first, errors) == "distilled-from-first-teacher"
    assert _slip([distill(make(), g1), *gens[1:]], errors) == "generation-0-distilled"
    on_labels = ch04.train_generation(b, data, seed=5, progress=False)
    assert _slip([g0, g1, on_labels, gens[3]], errors) == "labels-not-teacher"
    assert _slip([g0, g1, distill(make(), gens[3]), gens[3]], errors) == "not-a-chain"
    longer = ch04.distiller(replace(b, epochs=2), data, progress=False)
    assert _slip([*gens[:3], longer(make(), gens[2])], errors) == "unequal-budget"
    assert _slip(gens, [e + 1 for e in errors]) == "other-split"


@pytest.mark.parametrize("bad", [[], None, "models", [torch.nn.Linear(2, 2)] * 2])
def test_a_wrong_shape_of_answer_is_not_yet_and_never_raises(setup, bad):
    v = exercises.check_generations(bad, [])
    assert not v and v.slip is None


def test_a_model_trained_elsewhere_is_not_yet(setup):
    gens = [*setup["gens"][:3], torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))]
    v = exercises.check_generations(gens, setup["errors"])
    assert not v and "generation 3 was not trained" in v.message


def test_score_generations_needs_a_model():
    with pytest.raises(ValueError, match="at least generation 0"):
        ch04.score_generations([], None)
