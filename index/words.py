"""Words too common to search for or to attribute by."""

STOPWORDS = frozenset(
    "a an the and or but if of to in on at by for with from as is are was were be been being "
    "it its this that these those there here which who whom what when where why how not no "
    "can could may might will would shall should do does did has have had into than then so "
    "such also only any all each other more most some very just about over under".split()
)
"""Common English function words: left out of BM25 queries (:func:`index.store._fts_query`)
and of the content words lexical attribution compares (:mod:`assistant.attribution`)."""
