"""`streamtune monitor`: service-level figures of a running deployment, read from its topics and never
written back (``monitor/app.py``). Installed with the ``monitor`` extra into ``.venv/monitor`` (faust-streaming,
no torch); ``monitor.metrics`` and ``monitor.state`` import without faust."""
