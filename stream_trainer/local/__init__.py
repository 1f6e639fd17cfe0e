"""Local runs: the Tansu broker, the demo, child processes."""
