"""Tables, plots and a written summary of a study's results."""
