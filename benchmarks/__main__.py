"""``python -m benchmarks``: the one benchmark table (see ``benchmarks/run.py``)."""

from benchmarks.run import main

main()
