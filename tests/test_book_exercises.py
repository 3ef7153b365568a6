"""The book's exercises 3 (a temperature sweep), 4 (three born-again generations) and 5 (one step or two), run
by the reader: each checker re-counts the errors of the models it is given and checks the design; the reader's
models equal the library's."""
from dataclasses import replace

import pytest
import torch

from kdlab_lib import config, datasets, exercises, metrics
from kdlab_lib.chapters import ch04_self_distillation as ch04


@pytest.fixture(scope="module")
def setup():
    assert config.QUICK
    b = replace(ch04.notebook_budget(), hidden=(16,), n_train=300)
    train_set = datasets.take(datasets.load_mnist("train"), b.n_train, seed=0)
    test = ch04.test_split(ch04.notebook_budget())
    gen0 = ch04.train_generation(b, train_set, seed=0, progress=False)
    gens = [gen0, *ch04.born_again_loop(gen0, ch04.student_maker(b), ch04.distiller(b, train_set, progress=False), 3)]
    errors = [metrics.error_count(metrics.predict(m, test), test.tensors[1]) for m in gens]
    return {"b": b, "train": train_set, "test": test, "gens": gens, "errors": errors}


def test_the_reference_loop_passes_the_loop_checker():
    assert exercises.check_born_again(ch04.born_again_loop)


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


# ---- the book's exercise 3: the reader's temperature sweep (chapter 01)

from kdlab_lib.chapters import ch01_soft_labels as ch01  # noqa: E402


@pytest.fixture(scope="module")
def sweep():
    teacher = __import__("kdlab_lib").models.load_teacher("mnist", device="cpu")
    b = ch01.sweep_budget(epochs=1, n_train=300)
    data = ch01.transfer_set(b)
    targets = ch01.teacher_targets(teacher, data)
    students = {t: ch01.train_distilled(b, data, targets, seed=0, progress=False, temperature=t)
                for t in (1.0, 4.0, 20.0)}
    test = ch01.test_set(ch01.sweep_budget())
    errors = {t: metrics.error_count(metrics.predict(m, test), test.tensors[1]) for t, m in students.items()}
    return {"b": b, "data": data, "targets": targets, "students": students, "errors": errors,
            "best": min(errors, key=errors.get)}


def test_the_readers_sweep_passes_and_matches_the_library(sweep):
    v = exercises.check_temperature_sweep(sweep["students"], sweep["errors"], sweep["best"])
    assert v and v.exercise == "book3_temperature_sweep" and "kdlab bench over 5 seeds" in v.message
    lib = ch01.temperature_sweep(None, sweep["b"], (1.0, 4.0, 20.0), 0, False, sweep["targets"])
    assert lib == sweep["errors"]   # the same students, counted on the same split


def test_each_sweep_slip_is_named(sweep):
    b, data, targets, students, errors = (sweep[k] for k in ("b", "data", "targets", "students", "errors"))
    run = lambda **kw: ch01.train_distilled(kw.pop("b", b), data, targets, progress=False, **kw)  # noqa: E731
    v = exercises.check_temperature_sweep({**students, 20.0: run(seed=0, temperature=4.0)}, errors, sweep["best"])
    assert v.slip == "mislabelled-T"
    v = exercises.check_temperature_sweep({**students, 20.0: run(seed=1, temperature=20.0)}, errors, sweep["best"])
    assert v.slip == "different-seeds"
    v = exercises.check_temperature_sweep({**students, 20.0: run(seed=0, temperature=20.0, alpha=0.5)}, errors,
                                          sweep["best"])
    assert v.slip == "unequal-budget"
    v = exercises.check_temperature_sweep(students, {t: e + 1 for t, e in errors.items()}, sweep["best"])
    assert v.slip == "other-split"
    worst = max(errors, key=errors.get)
    if errors[worst] != errors[sweep["best"]]:
        v = exercises.check_temperature_sweep(students, errors, worst)
        assert not v and "is not the best" in v.message


@pytest.mark.parametrize("bad", [None, {}, "students", {1.0: torch.nn.Linear(2, 2)}])
def test_a_sweep_of_the_wrong_shape_is_not_yet(sweep, bad):
    v = exercises.check_temperature_sweep(bad, {}, None)
    assert not v and v.slip is None


def test_two_temperatures_or_none_at_one_are_not_enough(sweep):
    s = sweep["students"]
    assert "at least three temperatures" in exercises.check_temperature_sweep({1.0: s[1.0], 4.0: s[4.0]}, {}, 1).message


# ------------------------------------------------ the book's exercise 5: one step or two (chapter 05)

from kdlab_lib import models  # noqa: E402
from kdlab_lib.chapters import ch05_staged as ch05  # noqa: E402


@pytest.fixture(scope="module")
def staging():
    teacher = models.load_teacher("mnist", device="cpu")
    nb = ch05.live_budget()
    data, test = ch05.transfer_set(nb), ch05.test_set(nb)
    make_student, make_assistant = ch05.model_maker(10), ch05.model_maker(30)
    distill = ch05.distiller(nb, data, 4.0)
    direct = distill(make_student(), teacher)
    assistant, staged = ch05.chain_loop(teacher, make_assistant, make_student, distill)
    errors = {k: ch05.errors(m, test) for k, m in (("direct", direct), ("assistant", assistant), ("staged", staged))}
    return {"teacher": teacher, "nb": nb, "data": data, "distill": distill, "make_student": make_student,
            "make_assistant": make_assistant, "direct": direct, "assistant": assistant, "staged": staged,
            "errors": errors}


def test_the_reference_chain_passes_the_chain_checker():
    assert exercises.check_chain(ch05.chain_loop)


def test_the_right_staging_passes_and_the_library_reproduces_it(staging):
    s = staging
    v = exercises.check_staging(s["teacher"], s["direct"], s["assistant"], s["staged"], s["errors"])
    assert v and v.exercise == "book5_staging" and v.slip is None
    assert f"({s['errors']['staged']} against {s['errors']['direct']})" in v.message
    lib = ch05.teaching_assistant(s["teacher"], s["nb"], (30, 10), temperature=4.0, with_scratch=False)
    assert {k: lib["errors"][k] for k in ("direct", "staged")} == {k: s["errors"][k] for k in ("direct", "staged")}
    assert lib["assistants"] == [{"width": 30, "test_errors": s["errors"]["assistant"]}]


def test_each_staging_slip_is_named(staging):
    s = staging
    t, d, a, st, e, distill = s["teacher"], s["direct"], s["assistant"], s["staged"], s["errors"], s["distill"]
    make_s, make_a = s["make_student"], s["make_assistant"]

    def slip(direct, assistant, staged, errors=e):
        v = exercises.check_staging(t, direct, assistant, staged, errors)
        assert not v
        return v.slip
    assert slip(d, a, d) == "student-reused"
    assert slip(distill(make_s(), a), a, st) == "direct-not-from-teacher"
    assert slip(d, distill(make_a(), d), st) == "assistant-not-from-teacher"
    assert slip(d, a, distill(make_s(), t)) == "student-from-teacher"
    assert slip(d, a, distill(make_s(), d)) == "not-a-chain"
    assert slip(d, a, distill(ch05.model_maker(10, seed=1)(), a)) == "different-starts"
    small = distill(ch05.model_maker(10)(), t)
    assert slip(d, small, distill(make_s(), small)) == "assistant-not-between"
    assert slip(d, a, ch05.distiller(s["nb"], s["data"], 2.0)(make_s(), a)) == "unequal-budget"
    assert slip(d, a, st, {**e, "staged": e["staged"] + 1}) == "other-split"


@pytest.mark.parametrize("bad", [None, {}, {"direct": 1}, {"direct": "x", "assistant": 1, "staged": 2}])
def test_staging_answers_of_the_wrong_shape_are_not_yet(staging, bad):
    s = staging
    v = exercises.check_staging(s["teacher"], s["direct"], s["assistant"], s["staged"], bad)
    assert not v and "my_errors should be" in v.message


def test_staging_models_trained_elsewhere_are_not_yet(staging):
    s = staging
    assert "run your experiment" in exercises.check_staging(s["teacher"], None, None, None, {}).message
    for args in [(s["direct"], None, None), (s["direct"], models.mlp((30, 30)), s["staged"])]:
        v = exercises.check_staging(s["teacher"], *args, s["errors"])
        assert not v and "not trained by the cell's distill" in v.message


def test_staging_check_runs_the_exercise_design_per_seed(staging):
    s = staging
    check = ch05.staging_check(s["teacher"], seeds=(0, 1), temperatures=(4,), assistants=(30,))
    first = check["per_seed"][0]
    assert (first["seed"], first["temperature"]) == (0, 4.0)
    assert {"direct": first["direct"], "assistant": first["assistant"]["30"], "staged": first["staged"]["30"]} == \
        s["errors"]
    row = check["summary"]["4"]
    assert row["direct"]["values"] == [r["direct"] for r in check["per_seed"]]
    assert row["staged_wins"]["30"] == sum(r["staged"]["30"] < r["direct"] for r in check["per_seed"])
    series = ch05.staging_series(check)
    assert series == {"two steps via 30-30": [[r["direct"] - r["staged"]["30"] for r in check["per_seed"]]]}
    assert "T = 4: one step made" in str(ch05.staging_verdict(check))
    with pytest.raises(ValueError, match="seeds must list"):
        ch05.staging_check(s["teacher"], seeds=())
    with pytest.raises(ValueError, match="assistants must list"):
        ch05.staging_check(s["teacher"], seeds=(0,), assistants=(0,))


# ------------------------------------- the book's exercise 1: distilled vs scratch vs fine-tuned (chapter 03)

from kdlab_lib.chapters import ch03_gpt2 as ch03  # noqa: E402


@pytest.fixture(scope="module")
def alternatives():
    teacher, tok = ch03.load()
    pretrained = models.load_teacher("gpt2-wiki-student", device="cpu")
    eb = ch03.exercise_budget()
    train_blocks, val_blocks = ch03.shakespeare_blocks(tok, "train", eb), ch03.shakespeare_blocks(tok, "val", eb)
    make, load = ch03.student_maker(teacher, eb), ch03.pretrained_maker(pretrained)
    train_on_text, distill = ch03.trainers(teacher, train_blocks, eb, progress=False)
    students = ch03.alternatives_loop(make, load, train_on_text, distill, both=True)
    ppl = {arm: metrics.perplexity(m, val_blocks) for arm, m in students.items()}
    return {"teacher": teacher, "pretrained": pretrained, "eb": eb, "train": train_blocks, "val": val_blocks,
            "make": make, "load": load, "text": train_on_text, "distill": distill, "students": students, "ppl": ppl}


def test_the_right_alternatives_pass_and_the_library_reproduces_them(alternatives):
    a = alternatives
    v = exercises.check_alternatives(a["students"], a["ppl"])
    assert v and v.exercise == "book1_alternatives" and v.slip is None and "held-out perplexity" in v.message
    three = {k: a["students"][k] for k in ch03.EXERCISE_ARMS}
    assert exercises.check_alternatives(three, a["ppl"])                        # the fourth student is optional
    runs = ch03.compare_students(a["teacher"], a["pretrained"], a["train"], a["val"], a["eb"], progress=False)
    assert {arm: runs[name]["perplexity"] for arm, name in ch03.ARM_VARIANT.items()} == a["ppl"]


def test_each_alternatives_slip_is_named(alternatives):
    a = alternatives
    s, ppl, make, load, text_, distill = a["students"], a["ppl"], a["make"], a["load"], a["text"], a["distill"]

    def slip(**changed):
        v = exercises.check_alternatives({**s, **{k.replace("_", "-"): m for k, m in changed.items()}}, ppl)
        assert not v
        return v.slip
    assert slip(scratch=s["distilled"]) == "student-reused"
    assert slip(scratch=text_(load())) == "scratch-pretrained"
    assert slip(scratch=distill(make())) == "scratch-distilled"
    assert slip(fine_tuned=text_(make())) == "fine-tuned-from-random"
    assert slip(fine_tuned=distill(load())) == "fine-tuned-distilled"
    assert slip(distilled=text_(make())) == "distilled-from-labels"
    assert slip(distilled=distill(load())) == "distilled-pretrained"
    assert slip(distilled=distill(text_(make()))) == "trained-twice"
    other_start = ch03.student_maker(a["teacher"], a["eb"], seed=1)
    assert slip(distilled=distill(other_start())) == "different-starts"
    longer = ch03.trainers(a["teacher"], a["train"], replace(a["eb"], steps=a["eb"].steps + 1), progress=False)
    assert slip(fine_tuned=longer[0](load())) == "unequal-budget"
    v = exercises.check_alternatives(s, {**ppl, "distilled": ppl["distilled"] * 1.01})
    assert not v and v.slip == "other-split"


@pytest.mark.parametrize("bad", [None, {}, {"scratch": 1}, "students"])
def test_alternatives_of_the_wrong_shape_are_not_yet(alternatives, bad):
    v = exercises.check_alternatives(bad, alternatives["ppl"])
    assert not v and v.slip is None


def test_alternatives_answers_of_the_wrong_shape_are_not_yet(alternatives):
    a = alternatives
    assert "my_perplexity should be" in exercises.check_alternatives(a["students"], {}).message
    v = exercises.check_alternatives({**a["students"], "teacher": a["teacher"]}, a["ppl"])
    assert not v and "unknown ['teacher']" in v.message
    untrained = {**a["students"], "scratch": a["make"]()}
    assert "was not trained by the cell's" in exercises.check_alternatives(untrained, a["ppl"]).message


def test_alternatives_check_and_its_verdict(alternatives):
    a = alternatives
    check = ch03.alternatives_check(a["teacher"], a["pretrained"], seeds=(0,))
    assert check["per_seed"] == [a["ppl"]]
    assert check["distilled_beats"]["scratch"] == int(a["ppl"]["distilled"] < a["ppl"]["scratch"])
    text = str(ch03.alternatives_verdict(check))
    assert f"distilled {a['ppl']['distilled']:.1f} against scratch" in text and "of 1 seeds" in text
    with pytest.raises(ValueError, match="seeds must list"):
        ch03.alternatives_check(a["teacher"], a["pretrained"], seeds=())


# ------------------------------------- the book's exercise 2: teacher- vs human-written text (notebook 03b)

@pytest.fixture(scope="module")
def written(alternatives):
    a = alternatives
    make, train_on = ch03.student_maker(a["teacher"], a["eb"]), ch03.text_trainer(a["eb"], progress=False)
    human = ch03.human_subset(a["train"], a["eb"])
    teacher_written = ch03.teacher_text(a["teacher"], a["eb"], progress=False)
    students = {"human-written": train_on(make(), human), "teacher-written": train_on(make(), teacher_written)}
    ppl = {arm: metrics.perplexity(m, a["val"]) for arm, m in students.items()}
    return {**a, "make": make, "train_on": train_on, "human": human, "written": teacher_written,
            "students": students, "ppl": ppl}


def test_the_right_written_experiment_passes(written):
    w = written
    v = exercises.check_written(w["students"], w["ppl"])
    assert v and v.exercise == "book2_written" and v.slip is None
    assert f"{w['ppl']['human-written']:.1f} after human-written" in v.message
    assert w["written"].shape == w["human"].shape                      # equal text: as many blocks, as long
    assert ch03.is_teacher_written(ch03.fingerprint(w["written"])) and not \
        ch03.is_teacher_written(ch03.fingerprint(w["human"]))


def test_each_written_slip_is_named(written):
    w = written
    s, ppl, make, train_on, human, text_ = w["students"], w["ppl"], w["make"], w["train_on"], w["human"], w["written"]

    def slip(**changed):
        v = exercises.check_written({**s, **{k.replace("_", "-"): m for k, m in changed.items()}}, ppl)
        assert not v
        return v.slip
    assert slip(teacher_written=s["human-written"]) == "student-reused"
    assert slip(human_written=train_on(train_on(make(), human), human)) == "trained-twice"
    assert slip(human_written=train_on(make(), text_)) == "human-on-teacher-text"
    assert slip(teacher_written=train_on(make(), human)) == "teacher-arm-on-human-text"
    other = ch03.student_maker(w["teacher"], w["eb"], seed=1)
    assert slip(teacher_written=train_on(other(), text_)) == "different-starts"
    assert slip(human_written=train_on(make(), w["train"][: len(human) + 4])) == "unequal-data"
    longer = ch03.text_trainer(replace(w["eb"], steps=w["eb"].steps + 1), progress=False)
    assert slip(human_written=longer(make(), human)) == "unequal-budget"
    v = exercises.check_written(s, {**ppl, "human-written": ppl["human-written"] * 1.01})
    assert not v and v.slip == "other-split"


def test_written_answers_of_the_wrong_shape_are_not_yet(written):
    w = written
    assert "run your experiment" in exercises.check_written({}, {}).message
    assert "exactly the keys" in exercises.check_written({"human-written": w["students"]["human-written"]},
                                                         w["ppl"]).message
    assert "my_perplexity should be" in exercises.check_written(w["students"], None).message
    untrained = {**w["students"], "human-written": w["make"]()}
    assert "not trained by the cell's train_on" in exercises.check_written(untrained, w["ppl"]).message


def test_written_check_and_its_verdict(written):
    w = written
    check = ch03.written_check(w["teacher"], seeds=(0,))
    assert check["per_seed"] == [w["ppl"]] and check["n_blocks"] == len(w["human"])
    assert check["teacher_written_wins"] == int(w["ppl"]["teacher-written"] < w["ppl"]["human-written"])
    assert "of 1 seeds" in str(ch03.written_verdict(check))
