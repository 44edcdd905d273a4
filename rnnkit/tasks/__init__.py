"""Built-in tasks: data, model and metric for each job the command line can train."""
