"""Jobs made of runs: repro (``--runs``), nightly and its reports, bisect, bench, the pytest plugin."""
