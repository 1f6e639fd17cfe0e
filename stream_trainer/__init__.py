"""stream-trainer: online continual learning on Kafka event streams."""

# The release. Bump it with each release and add its CHANGELOG.md entry (what an upgrade
# does to existing checkpoints); pyproject.toml reads it from here.
__version__ = "0.2.0"
