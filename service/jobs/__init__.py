"""Job lifecycle, one module per concern: `validation` (spec + service limits), `submission`
(idempotency, the Ray submit), `reconciliation` (the registry brought up to date with Ray and
MLflow) and `actions` (reads, cancel, logs, trials).

No HTTP here: these raise the library's `SpecError`, the backend errors of `service.backends`
and the refusals of `service.errors`; `service.api.handlers` turns them into status codes.
"""
