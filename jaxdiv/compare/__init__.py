"""Framework comparison: the JAX fine-tune beside its PyTorch twin (`jaxdiv compare`)."""
