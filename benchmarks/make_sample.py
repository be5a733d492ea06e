"""Regenerate the bundled sample deal log ``forecast/datasets/sample_deals.parquet``.

Usage: ``python benchmarks/make_sample.py [--output PATH]`` (default: the bundled file).
The sample is ``forecast.datasets.generate_crm(**SAMPLE_PARAMETERS).events``.
"""

from forecast.datasets.sample import main

if __name__ == "__main__":
    raise SystemExit(main())
