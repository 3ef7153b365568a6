"""``kdlab plan``: the README's lesson plans, their minutes read from ``kdlab bench notebooks``' results file.

A step is a notebook and the ``##`` sections of it the class works through. Its minutes are two numbers:
``run``, the seconds its cells took in the bench's classroom-mode run on two cores (measured), and
``read``, its markdown words at ``READING_WPM`` (an assumption, not a measurement). The time a student
spends writing an exercise is neither: the plans say so.
"""
from __future__ import annotations

READING_WPM = 200   # words per minute for technical prose read with care: an assumed rate, not measured

ALL = None          # every section of a notebook

# (title, [(notebook stem, section-number prefixes or ALL, what the class does)])
ONE_HOUR = ("One hour", [
    ("00_start_here", ALL, "the teacher's soft targets, a first distillation, the map"),
    ("01_mnist_soft_labels", ("introduction", "1.", "2.", "4."),
     "the temperature explorer; write the loss and one distillation epoch"),
])

LESSONS = [
    ("Lesson 1: soft targets", [
        ("00_start_here", ALL, "the teacher's soft targets, a first distillation, the map"),
        ("01_mnist_soft_labels", ("introduction", "1.", "2.", "3.", "4.", "5."),
         "temperature and dark knowledge by slider; write the loss and one epoch; Hinton's experiment, live"),
    ]),
    ("Lesson 2: does it work, and for whom?", [
        ("01_mnist_soft_labels", ("6.", "7.", "8.", "Key takeaways"),
         "the omitted 3s, the gap, your own temperature sweep (the book's exercise 3)"),
        ("05_staged_distillation", ALL,
         "the capacity gap, T per student; your chain, one step or two (the book's exercise 5); cascades"),
    ]),
    ("Lesson 3: language models", [
        ("02_distilbert", ALL, "DistilBERT's triple loss, written by you; ablations; sentiment"),
        ("03_gpt2_logit_kd", ALL, "forward vs reverse KL; write the token-level step; the sweeps; why T², by autograd"),
    ]),
    ("Lesson 4: beyond one teacher and one score", [
        ("03b_beyond_logits", ALL, "sequence-level and on-policy KD"),
        ("04_self_distillation", ALL, "your born-again loop and three generations (the book's exercise 4); noise"),
        ("06_evaluating_a_student", ALL, "gap report, calibration, fidelity, robustness"),
    ]),
]


def _row(results: dict, stem: str) -> dict:
    for row in results["notebooks"]:
        if row["notebook"].replace("\\", "/").split("/")[-1] == f"{stem}.ipynb":
            return row
    raise KeyError(f"{stem}.ipynb is not in the results file; re-run `kdlab bench notebooks --out "
                   f"data/results/notebooks.json`")


def step_minutes(results: dict, stem: str, sections=ALL) -> dict:
    """``{"run": minutes, "read": minutes}`` of ``stem``'s ``sections`` (title prefixes; ALL: every one)."""
    rows = _row(results, stem)["sections"]
    chosen = rows if sections is ALL else [r for r in rows if r["section"].startswith(tuple(sections))]
    if not chosen:
        raise ValueError(f"no section of {stem} starts with any of {sections}")
    return {"run": sum(r["seconds"] for r in chosen) / 60, "read": sum(r["words"] for r in chosen) / READING_WPM}


def _label(stem: str, sections) -> str:
    if sections is ALL:
        return f"`{stem}`"
    numbers = [int(s.rstrip(".")) for s in sections if s[0].isdigit()]
    if not numbers:
        return f"`{stem}`"
    if numbers == list(range(numbers[0], numbers[-1] + 1)):
        return f"`{stem}` §{numbers[0]}-{numbers[-1]}"
    return f"`{stem}` §{', '.join(map(str, numbers))}"


def plan_table(results: dict, title: str, steps) -> str:
    """One plan as a markdown table: each step's notebook, what the class does, run and read minutes."""
    lines = [f"**{title}**", "", "| notebook | what the class does | run (min) | read (min) |", "|---|---|---|---|"]
    total_run = total_read = 0.0
    for stem, sections, what in steps:
        m = step_minutes(results, stem, sections)
        total_run, total_read = total_run + m["run"], total_read + m["read"]
        lines.append(f"| {_label(stem, sections)} | {what} | {m['run']:.1f} | {m['read']:.1f} |")
    lines.append(f"| total | | {total_run:.1f} | {total_read:.1f} |")
    return "\n".join(lines)


def plans_markdown(results: dict) -> str:
    """The one-hour path and the four lessons, as the README shows them."""
    return "\n\n".join(plan_table(results, title, steps) for title, steps in [ONE_HOUR, *LESSONS])
