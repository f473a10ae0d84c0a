"""`jaxdiv compile`: jaxdiv's device programs compiled ahead of time for TPU topologies."""
