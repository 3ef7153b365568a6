"""The command line and what it runs: ``cli`` (the ``kdlab`` command), ``prepare`` and
``prepare_text`` (building the shipped data and teachers), ``grade`` (running a class's notebooks and
reporting their checkers' verdicts) and ``bench`` (one benchmark module per
chapter, all writing their results through ``core.store.BenchRun``). Tools may import anything;
nothing but the command-line entry points imports tools."""
