"""Offline evaluation, one job a module: the event streams (:mod:`.streams`), our
pipeline driven offline (:mod:`.offline`), the baselines (:mod:`.baselines`), the
comparison (:mod:`.compare`), the adaptation and replay studies (:mod:`.studies`), the
drift suite (:mod:`.drift_cases`, :mod:`.drift_suite`), scores and tables
(:mod:`.reporting`), the loss-over-time PNG (:mod:`.report`); what differs per event
kind is one table (:mod:`.kinds`)."""
