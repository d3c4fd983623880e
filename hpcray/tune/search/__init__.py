"""Search algorithms: the default random/grid generator, ConcurrencyLimiter, OptunaSearch."""

from .searcher import (
    FINISHED,
    BasicVariantGenerator,
    ConcurrencyLimiter,
    Searcher,
    count_variants,
    generate_variants,
)

__all__ = ["FINISHED", "BasicVariantGenerator", "ConcurrencyLimiter", "Searcher",
           "count_variants", "generate_variants"]
