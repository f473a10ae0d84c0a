"""Generate stage: LLM sampler backends, diversity recipes, and the pool-writing runner."""
