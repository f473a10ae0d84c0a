"""Score stage: embedder, embedding-diversity kernel, lexical, quality, complexity, shift, CIs.

The Python API the study runner calls (imported lazily; each pulls in jax):

    from jaxdiv.score.suite import score_pool          # texts (+ labels, real task) -> report dict
    from jaxdiv.score.suite import metric_values       # report -> {metric: value}
    from jaxdiv.score.diversity import embedding_diversity, vendi_scores   # (n, d) matrix -> metrics
    from jaxdiv.score.streaming import streaming_embedding_diversity       # .npy larger than memory
    from jaxdiv.score.embed import Embedder            # texts -> cached, L2-normalised embeddings
"""
