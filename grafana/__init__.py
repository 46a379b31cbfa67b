"""The Grafana dashboard and the Prometheus rules for workermeter, built from code.

``python -m grafana.build`` writes ``grafana/workermeter.json`` and
``integrations/prometheus/workermeter-rules.yml``; ``--check`` says whether the committed files
are what the code builds. Both take their metric names from the contract in
:mod:`workermeter.metrics` and their capacity formulas from :mod:`workermeter.capacity`, so a
renamed metric or a changed rule of the model shows up here as a build or test failure.

Not part of the installed package: it builds files that users import into Grafana and load into
Prometheus.
"""
