"""The torchrt monitor: a Flask + flask-sock web app over the job view, live or replayed.

It holds no job state of its own. Everything it shows is the job view (:mod:`torchrt.view`)
as the coordinator builds it, or as :meth:`torchrt.view.JobView.replay` rebuilds it from a run
directory, read through one :class:`~monitor.sources.ViewSource`.

Modules, one job each:

* :mod:`monitor.sources`: the ``ViewSource`` protocol, and the answer shaping both sources
  share (secrets left out, dumps grouped).
* :mod:`monitor.live_source`: ``LiveSource``, an observer connection to a coordinator
  (``status`` with pages and series points, ``subscribe`` for pushes). Its answers are cached
  for 100 ms and served stale up to 250 ms while a refresh runs; stack dumps go over an
  operator connection.
* :mod:`monitor.replay_source`: ``ReplaySource``, a run directory, with a time cursor for the
  slider.
* :mod:`monitor.logs`: the event log's query (filters, paging newest first) over
  ``events.jsonl``, with a bounded index.
* :mod:`monitor.sentences`: what an event says in one sentence, and its level: the timeline's
  labels and the Logs rows' first line (the ``what`` of an event the API or the websocket hands on).
* :mod:`monitor.api`: the ``/api/v1`` blueprint (docs/api.md).
* :mod:`monitor.live`: the websocket ``/api/v1/ws``. One broadcaster thread sends coalesced
  updates, at most 10 a second, each socket getting the pages it asked for.
* :mod:`monitor.auth`: who may ask. Loopback is open without a token; with a token, a bearer
  header or the login form's HMAC cookie; POSTs are checked for their origin.
* :mod:`monitor.prom`: ``/metrics``, a Prometheus collector over the cached snapshot.
* :mod:`monitor.app`: :func:`~monitor.app.create_app` wires the parts around a source: pages,
  API, websocket, metrics, strict CSP, real 404s.
* :mod:`monitor.fastpath`: a plain ``GET /api/v1/snapshot`` answered beneath Flask, with the
  route's bytes and headers (the most-read URL; Flask's handling was most of its cost).
* :mod:`monitor.headers`: the security headers of every answer, built once.
* :mod:`monitor.serve`: werkzeug in a thread (tests, embedding), or gunicorn with one gthread
  worker in the monitor's own process (``torchrt monitor``, what ``torchrt run`` starts).
* :mod:`monitor.tensorboard`: TensorBoard in-process on the run's event files, loopback.
* :mod:`monitor.errors`: the typed errors and their HTTP statuses.
* ``templates/`` and ``static/``: server-rendered page shells and one ES module per page, with
  no build step. The only vendored code is uPlot, under ``static/vendor/uplot`` with its
  licence.

The CLI side is in :mod:`launch.monitor`: ``torchrt monitor``, and the monitor process that
``torchrt coordinator`` starts and ties to itself.
"""
