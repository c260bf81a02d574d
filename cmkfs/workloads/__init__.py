"""Workloads of an analytics service, written through any fsspec filesystem: what ``cmkfs demo`` refreshes and
the benchmarks measure.  They know nothing of encryption; pass them a ``cmk`` filesystem and they run on
ciphertext.  They need the ``demo`` extra (``pip install 'cmkfs[demo]'``: pandas and matplotlib)."""
