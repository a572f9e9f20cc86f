"""Measuring one configuration: the run (``engine``), its clocks, memory, quality and reference."""
