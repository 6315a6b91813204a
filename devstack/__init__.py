"""The local dev stack: a Ray head, an MLflow server and the API as child processes on 127.0.0.1.

Not part of the library: it knows the service's module path, its environment variables and its
folder layout, so it lives beside `slwtune/` and `service/`. Used by `slwtune demo` (imported
lazily) and by the end-to-end test fixtures.

- `devstack.stack`: `RayHead`, `MlflowServer`, `ApiServer`, `LocalStack`
  (`python -m devstack.stack stop DIR` ends a stack left up by `slwtune demo --keep-up`);
- `devstack.processes`: free loopback ports, child processes and ending them by id or marker;
- `devstack.waiting`: `retrying`, `get_json`, `wait_for`, `wait_http` (a busy service waited out);
- `devstack.demo`: `run_demo`, what `make demo` runs.
"""
