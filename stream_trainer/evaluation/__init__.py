"""Offline evaluation: streams, our pipeline driven offline, baselines, studies, the
drift suite and reports."""
