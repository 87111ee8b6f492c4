"""The torchrt monitor web app (Flask + flask-sock): built in a later issue.

It will read the coordinator's live state and events (``status`` over the
control protocol) and, after a run, the run directory (``events.jsonl``,
``state.json``).
"""
