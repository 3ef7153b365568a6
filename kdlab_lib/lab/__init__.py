"""What a notebook shows: interactive widgets (``widgets``), static figures (``plots``) and the
exercise checkers (``exercises``, with the loop exercises in ``loop_exercises`` and the verdict they
all return in ``verdicts``). The lab imports ``core`` and ``chapters``; it trains only by calling
them, except that the loop checkers replay the classic slips on tiny models of their own for one
epoch or one step, to name the slip a reader's loop made."""
