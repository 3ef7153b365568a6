"""One module per notebook, named like it (``ch01_soft_labels`` ... ``ch06_evaluation``): each
chapter's budget dataclass (classroom and quick sizes), its experiments and the verdicts that turn
measured numbers into sentences, shared by the notebook and its ``kdlab bench``. Chapters import
``core`` (and an earlier chapter's experiments); they never draw, build shipped data or import
``lab``, ``scale`` or ``tools``."""
