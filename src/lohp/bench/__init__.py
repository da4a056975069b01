"""The benchmarks. Importing this package registers every built-in one (bench.runner's
registry), in the order ``lohp bench --help`` lists them."""

from lohp.bench import (  # noqa: F401  (each module registers its benchmark)
    digits,
    l2o,
    transfer,
    fewshot,
    domain,
    lora,
    refine,
    cross,
    collection,
)
