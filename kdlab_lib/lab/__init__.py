"""What a notebook shows: interactive widgets (``widgets``), static figures (``plots``) and the
exercise checkers (``exercises``). The lab imports ``core`` and ``chapters``; it trains only by
calling them."""
